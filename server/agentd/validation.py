"""The ONE request validator: enforces `google.api.field_behavior` on any request message.

A field marked REQUIRED must be set (string/bytes non-empty, repeated/map non-empty, message
present, enum non-zero); bool and numeric scalars have no presence in proto3 and are skipped.
Set sub-messages, repeated messages, map message values and the set member of a oneof are
checked too; the first violation raises errors.InvalidArgument(<dotted path>, "required").
Fields marked OUTPUT_ONLY are cleared (AIP-203: ignored on input, not an error).

The call pipeline (api/calls.py) runs it before every servicer method of both transports, so
servicers only check what the contract cannot say (NUL characters, length limits, ...).
The per-message plan is computed once per descriptor: this runs on every call.
"""

from __future__ import annotations

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from agentd.errors import InvalidArgument

_REQUIRED = field_behavior_pb2.REQUIRED
_OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_ENUM = FieldDescriptor.TYPE_ENUM
_LENGTHY = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)

# What to do with one field. Kinds of value: how to recurse into it.
_SINGLE, _REPEATED, _MAP = 0, 1, 2


class _Plan:
    """What validating one message type takes, in field-number order."""

    __slots__ = ("clear", "steps")

    def __init__(self):
        self.clear: list[str] = []  # OUTPUT_ONLY field names
        # (name, required check?, presence check kind, recurse into message type or None, shape)
        self.steps: list[tuple[str, bool, int, Descriptor | None, int]] = []


_plans: dict[Descriptor, _Plan | None] = {}  # None: nothing to do in this type's subtree


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _is_map(field: FieldDescriptor) -> bool:
    return (field.is_repeated and field.type == _MESSAGE
            and field.message_type.GetOptions().map_entry)


def _in_real_oneof(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    # proto3 `optional` fields sit in a synthetic oneof of their own; that is not a choice.
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == "_" + field.name)


def _value_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type this field's values are (a map's value type), if any."""
    if _is_map(field):
        value = field.message_type.fields_by_name["value"]
        return value.message_type if value.type == _MESSAGE else None
    return field.message_type if field.type == _MESSAGE else None


def _reachable(root: Descriptor) -> dict[Descriptor, set[Descriptor]]:
    """Every message type reachable from root -> the message types its fields hold."""
    graph: dict[Descriptor, set[Descriptor]] = {}
    todo = [root]
    while todo:
        desc = todo.pop()
        if desc in graph:
            continue
        graph[desc] = {t for f in desc.fields if (t := _value_type(f)) is not None}
        todo.extend(graph[desc])
    return graph


def _plan_all(root: Descriptor) -> None:
    """Plans root and every type it reaches; a type is skipped (None) when nothing in its
    subtree carries REQUIRED or OUTPUT_ONLY (e.g. google.protobuf.Struct)."""
    graph = _reachable(root)
    marked = {d for d in graph if any(_behaviors(f) & {_REQUIRED, _OUTPUT_ONLY} for f in d.fields)}
    # relevant: reaches a marked type (fixed point over the possibly cyclic graph).
    relevant = set(marked)
    changed = True
    while changed:
        changed = False
        for desc, targets in graph.items():
            if desc not in relevant and targets & relevant:
                relevant.add(desc)
                changed = True
    for desc in graph:
        if desc in _plans:
            continue
        if desc not in relevant:
            _plans[desc] = None
            continue
        plan = _Plan()
        for field in sorted(desc.fields, key=lambda f: f.number):
            behaviors = _behaviors(field)
            if _OUTPUT_ONLY in behaviors:
                plan.clear.append(field.name)
                continue
            required = _REQUIRED in behaviors and not _in_real_oneof(field)
            if required and not field.is_repeated and field.type not in (
                    _MESSAGE, _ENUM, *_LENGTHY):
                required = False  # bool and numbers: no presence to check in proto3
            target = _value_type(field)
            if target is not None and target not in relevant:
                target = None
            shape = _MAP if _is_map(field) else (
                _REPEATED if field.is_repeated else _SINGLE)
            if required or target is not None:
                plan.steps.append((field.name, required, field.type, target, shape))
        _plans[desc] = plan


def _plan(desc: Descriptor) -> _Plan | None:
    try:
        return _plans[desc]
    except KeyError:
        _plan_all(desc)
        return _plans[desc]


def validate(request: Message) -> None:
    """Checks REQUIRED fields and clears OUTPUT_ONLY ones, in place. Raises InvalidArgument
    naming the first missing field by its path (e.g. "messages[0].content")."""
    plan = _plan(request.DESCRIPTOR)
    if plan is not None:
        _validate(request, plan, "")


def _validate(message: Message, plan: _Plan, prefix: str) -> None:
    for name in plan.clear:
        message.ClearField(name)
    for name, required, kind, target, shape in plan.steps:
        if shape == _SINGLE:
            if kind == _MESSAGE:
                present = message.HasField(name)
                if required and not present:
                    raise InvalidArgument(prefix + name, "required")
                if present and target is not None:
                    _validate(getattr(message, name), _plans[target], f"{prefix}{name}.")
            elif required and not getattr(message, name):  # "" / b"" / enum 0
                raise InvalidArgument(prefix + name, "required")
            continue
        values = getattr(message, name)
        if required and not values:
            raise InvalidArgument(prefix + name, "required")
        if target is None:
            continue
        sub = _plans[target]
        if shape == _REPEATED:
            for i, value in enumerate(values):
                _validate(value, sub, f"{prefix}{name}[{i}].")
        else:
            for key, value in values.items():
                _validate(value, sub, f"{prefix}{name}[{key!r}].")
