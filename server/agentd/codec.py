"""The one codec between agentd's proto messages and the legacy JSON of the REST routes.

It is driven entirely by the message descriptors and the custom options declared in
protos/agentd/v1/options.proto (read that file's header for the conventions). Nothing here
knows about a particular message: adding a message to the protos is enough for it to be
written and read in the legacy shape.

Per descriptor, a plan (field kinds, JSON keys, union tags, enum texts) is computed once and
cached, so converting a message costs one pass over its set fields.

`sensitive` fields (secrets such as MCP headers) are read but never written (agentd.sensitive
strips them from what is stored or logged).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import copysign
from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from agentd.v1 import options_pb2

__all__ = ["CodecError", "from_json", "kind_of", "parse", "required_keys", "tagged_union", "to_json",
           "union_member", "wire_path"]

_FD = _d.FieldDescriptor
_INT_TYPES = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32, _FD.TYPE_UINT32, _FD.TYPE_FIXED32,
              _FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_INT32_TYPES = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32}
_UINT_TYPES = {_FD.TYPE_UINT32, _FD.TYPE_FIXED32, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_FLOAT_TYPES = {_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT}
# Well-known types written as plain JSON (Struct/Value/ListValue) by protobuf's own mapping.
_JSON_WKT = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
_TIMESTAMP = "google.protobuf.Timestamp"


class CodecError(ValueError):
    """Input JSON that does not fit the message. `field` is the dotted path of the culprit."""

    def __init__(self, field_path: str, description: str):
        # Paths and descriptions may quote the client's keys and values; a lone surrogate in
        # them is shown as its JSON escape so that the error itself can be written as UTF-8.
        field_path, description = _printable(field_path), _printable(description)
        super().__init__(f"{field_path}: {description}" if field_path else description)
        self.field = field_path
        self.description = description


def _printable(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(value: str, path: str) -> str:
    """`value` if it can be stored: JSON may escape a lone UTF-16 surrogate ("\\ud800"), which
    no proto string (UTF-8) can hold."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CodecError(path, f"invalid Unicode: a lone surrogate (U+{ord(value[e.start]):04X}) at "
                                   f"character {e.start}") from None
    return value


@dataclass(slots=True)
class _Enum:
    to_text: dict[int, str | None]
    from_text: dict[str, int]


@dataclass(slots=True)
class _Field:
    fd: _d.FieldDescriptor
    name: str
    repeated: bool
    is_map: bool
    is_message: bool
    nullable: bool  # unset is written as null
    enum: _Enum | None = None
    sensitive: bool = False  # never written (null on output)
    omit_when_unset: bool = False  # unset: no key at all (a foreign format's extension)
    dialect: str = ""  # the JSON dialect of the plan it belongs to (its messages' plans too)
    object_copy: str = ""  # in this dialect: written as the JSON object, the string under this key


@dataclass(slots=True)
class _Plan:
    desc: _d.Descriptor
    dialect: str
    fields: list[_Field]  # fields outside the union oneof, minus grpc_only
    by_key: dict[str, _Field]
    constants: dict[str, str]
    union: _d.OneofDescriptor | None = None
    untagged: bool = False
    discriminator: str = "type"
    default_tag: str = ""
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (key, tag), in order
    tag_of: dict[str, str] = field(default_factory=dict)  # member field name -> tag
    member_of: dict[str, _Field] = field(default_factory=dict)  # tag -> member
    members: list[_Field] = field(default_factory=list)
    required_keys: tuple[str, ...] = ()  # keys the JSON must have (json_key_required)


_plans: dict[tuple[str, str], _Plan] = {}
_enums: dict[str, _Enum] = {}


def _enum_plan(ed: _d.EnumDescriptor) -> _Enum:
    cached = _enums.get(ed.full_name)
    if cached is not None:
        return cached
    prefix = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(ed.name)).upper() + "_"
    to_text: dict[int, str | None] = {}
    from_text: dict[str, int] = {}
    for v in ed.values:
        if v.number == 0:
            to_text[0] = None
            continue
        text = v.GetOptions().Extensions[options_pb2.enum_json] or (
            v.name[len(prefix):] if v.name.startswith(prefix) else v.name).lower()
        to_text[v.number] = text
        from_text[text] = v.number
        from_text[v.name] = v.number  # the proto name is accepted too
    plan = _enums[ed.full_name] = _Enum(to_text, from_text)
    return plan


def _is_synthetic(oneof: _d.OneofDescriptor) -> bool:
    # proto3 `optional` fields live in a one-field oneof named "_<field>".
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _field_plan(fd: _d.FieldDescriptor, dialect: str) -> _Field:
    is_map = fd.is_repeated and fd.message_type is not None and fd.message_type.GetOptions().map_entry
    forms = dict(f.split("=", 1) for f in fd.GetOptions().Extensions[options_pb2.object_in_dialects])
    return _Field(
        fd=fd, name=fd.name, repeated=fd.is_repeated, is_map=bool(is_map),
        is_message=fd.message_type is not None,
        nullable=not fd.is_repeated and fd.has_presence,
        enum=_enum_plan(fd.enum_type) if fd.enum_type is not None else None,
        sensitive=fd.GetOptions().Extensions[options_pb2.sensitive],
        omit_when_unset=fd.GetOptions().Extensions[options_pb2.omit_when_unset],
        dialect=dialect, object_copy=forms.get(dialect, "") if dialect else "",
    )


def _plan(desc: _d.Descriptor, dialect: str = "") -> _Plan:
    """How to write and read a message, computed once per (message, JSON dialect). Dialect
    "" is the JSON of the current routes; another is an older one of some legacy routes
    (options.proto: json_dialects), which differs only where a field says so."""
    cached = _plans.get((desc.full_name, dialect))
    if cached is not None:
        return cached
    opts = desc.GetOptions()
    constants = dict(c.split("=", 1) for c in opts.Extensions[options_pb2.json_constants])
    unions = [o for o in desc.oneofs if not _is_synthetic(o)]
    if len(unions) > 1:
        raise TypeError(f"{desc.full_name}: a union message has exactly one oneof")
    union = unions[0] if unions else None
    fields = [_field_plan(fd, dialect) for fd in desc.fields
              if not fd.GetOptions().Extensions[options_pb2.grpc_only]
              and (union is None or fd.containing_oneof is not union)]
    by_key: dict[str, _Field] = {}
    for f in fields:
        by_key[f.name] = f
        by_key.setdefault(f.fd.json_name, f)  # lowerCamelCase, as gRPC-JSON clients write it
    plan = _Plan(desc=desc, dialect=dialect, fields=fields, by_key=by_key, constants=constants, union=union,
                 required_keys=tuple(f.name for f in fields
                                     if f.fd.GetOptions().Extensions[options_pb2.json_key_required]))
    if union is not None:
        plan.untagged = opts.Extensions[options_pb2.untagged]
        plan.discriminator = opts.Extensions[options_pb2.union_discriminator] or "type"
        plan.default_tag = opts.Extensions[options_pb2.union_default]
        plan.fallbacks = [tuple(f.split("=", 1)) for f in opts.Extensions[options_pb2.union_fallbacks]]
        for fd in union.fields:
            member = _field_plan(fd, dialect)
            tag = fd.GetOptions().Extensions[options_pb2.union_tag] or fd.name
            plan.tag_of[fd.name] = tag
            plan.member_of[tag] = member
            plan.members.append(member)
    _plans[(desc.full_name, dialect)] = plan
    return plan


# --------------------------------------------------------------------------- writing


def to_json(msg: Message, dialect: str = "") -> Any:
    """The legacy JSON value (dicts, lists, scalars) of a message, in `dialect` (a service's
    json_dialects names the dialect of its older routes; "" is the current JSON)."""
    return _write_message(msg, _plan(msg.DESCRIPTOR, dialect))


def _write_message(msg: Message, plan: _Plan) -> Any:
    full_name = plan.desc.full_name
    if full_name in _JSON_WKT:
        return _write_struct_like(msg, full_name)
    if full_name == _TIMESTAMP:
        return _write_timestamp(msg)
    if plan.union is not None and plan.untagged:
        member = msg.WhichOneof(plan.union.name)
        if member is None:
            return None
        return _write_untagged_member(getattr(msg, member), plan.member_of[plan.tag_of[member]])
    out: dict[str, Any] = {}
    if plan.union is not None:
        member = msg.WhichOneof(plan.union.name)
        if member is not None and plan.member_of[plan.tag_of[member]].sensitive:
            out[plan.discriminator] = plan.tag_of[member]
        elif member is not None:
            out[plan.discriminator] = plan.tag_of[member]
            value = _write_value(getattr(msg, member), plan.member_of[plan.tag_of[member]])
            if isinstance(value, dict):
                out.update(value)
            else:
                out[plan.tag_of[member]] = value
    out.update(plan.constants)
    for f in plan.fields:
        if f.sensitive:
            out[f.name] = None
        elif f.object_copy:
            value = getattr(msg, f.name)
            out[f.name], out[f.object_copy] = _object_or_string(value), value
        elif f.repeated or not f.nullable or msg.HasField(f.name):
            out[f.name] = _write_field(getattr(msg, f.name), f)
        elif not f.omit_when_unset:
            out[f.name] = None
    return out


def _object_or_string(text: str) -> Any:
    """A string holding a JSON object as that object (an older dialect's form); any other
    string as it is."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, dict) else text


def _write_untagged_member(value: Any, member: _Field) -> Any:
    if member.is_message:
        inner = _plan(member.fd.message_type, member.dialect)
        if _is_list_wrapper(inner):
            item = inner.fields[0]
            return [_write_value(v, item) for v in getattr(value, item.name)]
    return _write_value(value, member)


def _is_list_wrapper(plan: _Plan) -> bool:
    return plan.union is None and len(plan.fields) == 1 and plan.fields[0].repeated \
        and not plan.fields[0].is_map


def _write_field(value: Any, f: _Field) -> Any:
    if f.is_map:
        value_field = _plan(f.fd.message_type, f.dialect).by_key["value"]
        return {str(k): _write_value(v, value_field) for k, v in value.items()}
    if f.repeated:
        return [_write_value(v, f) for v in value]
    return _write_value(value, f)


def _write_value(value: Any, f: _Field) -> Any:
    if f.is_message:
        return _write_message(value, _plan(f.fd.message_type, f.dialect))
    if f.enum is not None:
        return f.enum.to_text.get(value, value)
    if f.fd.type == _FD.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _write_struct_like(msg: Message, full_name: str) -> Any:
    if full_name == "google.protobuf.Struct":
        return {k: _write_json_value(v) for k, v in msg.fields.items()}
    if full_name == "google.protobuf.ListValue":
        return [_write_json_value(v) for v in msg.values]
    return _write_json_value(msg)


_MAX_EXACT_INT = 2**53


def _signbit(number: float) -> bool:
    return copysign(1.0, number) < 0


def _write_json_value(value: struct_pb2.Value) -> Any:
    # Struct keeps every number as a double; a whole number is written back as an integer so
    # that {"k": 3} does not come back as {"k": 3.0} (JSON schemas, tool arguments).
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        # -0.0 stays a float: as the integer 0 it would come back without its sign.
        exact = number.is_integer() and abs(number) <= _MAX_EXACT_INT and (number or not _signbit(number))
        return int(number) if exact else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _write_json_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_write_json_value(v) for v in value.list_value.values]
    return None


def _write_timestamp(ts: timestamp_pb2.Timestamp) -> str:
    dt = datetime.fromtimestamp(ts.seconds, tz=UTC).replace(microsecond=ts.nanos // 1000)
    return dt.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- reading


def parse(value: Any, message_type: type[Message]) -> Message:
    """A new message of `message_type` read from a legacy JSON value. Raises CodecError."""
    msg = message_type()
    from_json(value, msg)
    return msg


def from_json(value: Any, msg: Message, path: str = "", strict: bool = False) -> None:
    """Merges a legacy JSON value into `msg`. Unknown keys are ignored unless `strict`.
    Raises CodecError, and nothing else, for any value json.loads can produce."""
    try:
        _read_message(value, msg, _plan(msg.DESCRIPTOR), path, strict)
    except RecursionError:
        raise CodecError(path, "nested too deeply") from None


def _read_message(value: Any, msg: Message, plan: _Plan, path: str, strict: bool) -> None:
    full_name = plan.desc.full_name
    if full_name in _JSON_WKT:
        # protobuf's own message for these ("Struct must be in a dict which is x at Struct")
        # names neither the field nor what was given.
        if full_name == "google.protobuf.Struct" and not isinstance(value, dict):
            raise CodecError(path, f"expected an object, got {kind_of(value)}")
        if full_name == "google.protobuf.ListValue" and not isinstance(value, list):
            raise CodecError(path, f"expected an array, got {kind_of(value)}")
        _check_free_form(value, path)
        try:
            ParseDict(value, msg)
        except ParseError as e:
            raise CodecError(path, str(e)) from None
        return
    if full_name == _TIMESTAMP:
        _read_timestamp(value, msg, path)
        return
    if plan.union is not None and plan.untagged:
        _read_untagged(value, msg, plan, path, strict)
        return
    if not isinstance(value, dict):
        raise CodecError(path, f"expected an object, got {kind_of(value)}")
    if plan.union is not None:
        _read_tagged(value, msg, plan, path, strict)
        return
    _read_fields(value, msg, plan, path, strict, ignored=plan.constants.keys())


# Free-form JSON (Struct/Value) nested deeper than this is refused; protobuf's own limit is 100.
_MAX_FREE_FORM_DEPTH = 64
_MAX_DOUBLE = 1.7976931348623157e308


def _check_free_form(value: Any, path: str) -> None:
    """Refuses, naming the key, what protobuf's Struct/Value cannot hold: lone surrogates in
    keys or strings, numbers beyond a double, nesting deeper than _MAX_FREE_FORM_DEPTH.
    Iterative, so that no input can exhaust the stack."""
    pending = [(value, path, 0)]
    while pending:
        item, item_path, depth = pending.pop()
        if isinstance(item, str):
            _text(item, item_path)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > _MAX_DOUBLE:
                raise CodecError(item_path, "number out of range")
        elif isinstance(item, (dict, list)):
            if depth >= _MAX_FREE_FORM_DEPTH:
                raise CodecError(item_path, f"nested deeper than {_MAX_FREE_FORM_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    child_path = _join(item_path, key) if isinstance(key, str) else item_path
                    if isinstance(key, str):
                        _text(key, child_path)
                    pending.append((child, child_path, depth + 1))
            else:
                pending.extend((child, f"{item_path}[{i}]", depth + 1) for i, child in enumerate(item))


def required_keys(desc: _d.Descriptor) -> tuple[str, ...]:
    """The keys a message's JSON must have (json_key_required), for readers of other
    shapes (the gateway's form parts)."""
    return _plan(desc).required_keys


def _read_fields(value: dict, msg: Message, plan: _Plan, path: str, strict: bool, ignored) -> None:
    for key in plan.required_keys:
        if key not in value:
            raise CodecError(_join(path, key), "required")
    for key, item in value.items():
        f = plan.by_key.get(key)
        if f is None:
            if strict and key not in ignored:
                raise CodecError(_join(path, key), "unknown field")
            continue
        _read_field(item, msg, f, _join(path, key), strict)


def _read_tagged(value: dict, msg: Message, plan: _Plan, path: str, strict: bool) -> None:
    tag = value.get(plan.discriminator)
    if not tag:
        tag = next((t for key, t in plan.fallbacks if key in value), plan.default_tag)
    if not tag:
        raise CodecError(_join(path, plan.discriminator), f"required; one of {sorted(plan.member_of)}")
    member = plan.member_of.get(tag) if isinstance(tag, str) else None
    if member is None:
        raise CodecError(_join(path, plan.discriminator),
                         f"unknown value {tag!r}; expected one of {sorted(plan.member_of)}")
    # The union's own keys (discriminator, constants, fields outside the oneof) are read
    # here; everything else belongs to the member.
    own = {plan.discriminator, *plan.constants, *plan.by_key}
    if member.is_message:
        target = getattr(msg, member.name)
        member_value = {k: v for k, v in value.items() if k not in own}
        _read_message(member_value, target, _plan(member.fd.message_type), path, strict)
        target.SetInParent()
    else:
        _read_field(value.get(tag), msg, member, _join(path, tag), strict)
    _read_fields({k: v for k, v in value.items() if k in plan.by_key}, msg, plan, path, strict, ())


def _read_untagged(value: Any, msg: Message, plan: _Plan, path: str, strict: bool) -> None:
    if value is None:
        return
    kind = kind_of(value)
    candidates = [m for m in plan.members if _accepts(m, kind)]
    if not candidates:
        raise CodecError(path, f"expected {' or '.join(_describe(m) for m in plan.members)}, got {kind}")
    if len(candidates) == 1 or kind != "an object":
        _read_member(value, msg, candidates[0], path, strict)
        return
    # Several object members: the first that reads strictly wins, else the first that reads.
    first_error: CodecError | None = None
    for strictness in (True, False):
        for member in candidates:
            trial = type(msg)()
            try:
                _read_member(value, trial, member, path, strictness)
            except CodecError as e:
                first_error = first_error or e
                continue
            msg.MergeFrom(trial)
            return
    assert first_error is not None
    raise first_error


def _read_member(value: Any, msg: Message, member: _Field, path: str, strict: bool) -> None:
    if member.is_message:
        inner = _plan(member.fd.message_type)
        target = getattr(msg, member.name)
        if isinstance(value, list) and _is_list_wrapper(inner):
            _read_field(value, target, inner.fields[0], path, strict)
        else:
            _read_message(value, target, inner, path, strict)
        target.SetInParent()
    else:
        setattr(msg, member.name, _read_scalar(value, member, path))


def _accepts(member: _Field, kind: str) -> bool:
    if member.is_message:
        inner = _plan(member.fd.message_type)
        if inner.desc.full_name == "google.protobuf.Value":
            return True
        return kind == ("an array" if _is_list_wrapper(inner) else "an object")
    t = member.fd.type
    if member.enum is not None or t in (_FD.TYPE_STRING, _FD.TYPE_BYTES):
        return kind == "a string"
    if t == _FD.TYPE_BOOL:
        return kind == "a boolean"
    return kind == "a number"


def _describe(member: _Field) -> str:
    for kind in ("a string", "a number", "a boolean", "an object", "an array"):
        if _accepts(member, kind):
            return kind
    return "a value"


def _read_field(value: Any, msg: Message, f: _Field, path: str, strict: bool) -> None:
    if value is None:
        msg.ClearField(f.name)
        return
    if f.is_map:
        if not isinstance(value, dict):
            raise CodecError(path, f"expected an object, got {kind_of(value)}")
        target = getattr(msg, f.name)
        entry = _plan(f.fd.message_type)
        key_field, value_field = entry.by_key["key"], entry.by_key["value"]
        for k, v in value.items():
            key = _read_scalar(k, key_field, _join(path, k)) if key_field.fd.type == _FD.TYPE_STRING \
                else _read_scalar(_int_key(k, path), key_field, _join(path, k))
            if value_field.is_message:
                _read_message(v, target[key], _plan(value_field.fd.message_type), _join(path, k), strict)
            else:
                target[key] = _read_scalar(v, value_field, _join(path, k))
        return
    if f.repeated:
        if not isinstance(value, list):
            raise CodecError(path, f"expected an array, got {kind_of(value)}")
        target = getattr(msg, f.name)
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if f.is_message:
                _read_message(item, target.add(), _plan(f.fd.message_type), item_path, strict)
            else:
                if item is None:
                    raise CodecError(item_path, "null is not allowed in a list")
                target.append(_read_scalar(item, f, item_path))
        return
    if f.is_message:
        target = getattr(msg, f.name)
        _read_message(value, target, _plan(f.fd.message_type), path, strict)
        target.SetInParent()
        return
    setattr(msg, f.name, _read_scalar(value, f, path))


def _read_scalar(value: Any, f: _Field, path: str) -> Any:
    t = f.fd.type
    if f.enum is not None:
        if isinstance(value, str) and value in f.enum.from_text:
            return f.enum.from_text[value]
        allowed = sorted(k for k in f.enum.from_text if not k.isupper())
        raise CodecError(path, f"expected one of {allowed}, got {value!r}")
    if t == _FD.TYPE_STRING:
        if not isinstance(value, str):
            raise CodecError(path, f"expected a string, got {kind_of(value)}")
        return _text(value, path)
    if t == _FD.TYPE_BOOL:
        if not isinstance(value, bool):
            raise CodecError(path, f"expected a boolean, got {kind_of(value)}")
        return value
    if t in _INT_TYPES:
        return _read_int(value, t, path)
    if t in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(path, f"expected a number, got {kind_of(value)}")
        if isinstance(value, int) and abs(value) > _MAX_DOUBLE:
            raise CodecError(path, "number out of range")
        return float(value)
    if t == _FD.TYPE_BYTES:
        if not isinstance(value, str):
            raise CodecError(path, f"expected a base64 string, got {kind_of(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise CodecError(path, "invalid base64") from None
    raise CodecError(path, f"unsupported field type {t}")  # pragma: no cover - not in our protos


def _read_int(value: Any, t: int, path: str) -> int:
    if isinstance(value, str):  # proto3 JSON writes 64-bit integers as strings
        try:
            value = int(value)
        except ValueError:
            raise CodecError(path, f"expected an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(path, f"expected an integer, got {kind_of(value)}")
    lo, hi = (-(2**31), 2**31 - 1) if t in _INT32_TYPES else (0, 2**64 - 1) if t in _UINT_TYPES \
        else (-(2**63), 2**63 - 1)
    if t in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32):
        hi = 2**32 - 1
    if not lo <= value <= hi:
        raise CodecError(path, f"{value} is out of range [{lo}, {hi}]")
    return value


def _int_key(key: str, path: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise CodecError(_join(path, key), "expected an integer key") from None


def _read_timestamp(value: Any, msg: timestamp_pb2.Timestamp, path: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Unix seconds, as the OpenAI API writes them, within what a Timestamp holds.
        if not _MIN_SECONDS <= value <= _MAX_SECONDS:
            raise CodecError(path, f"{value} is out of range [{_MIN_SECONDS}, {_MAX_SECONDS}]")
        if isinstance(value, int):
            msg.FromSeconds(value)  # exactly: through a float, 9999-12-31 came back a second early
        else:
            msg.FromMicroseconds(round(value * 1e6))  # microseconds, as timestamps are written
        return
    if not isinstance(value, str):
        raise CodecError(path, f"expected an RFC 3339 timestamp, got {kind_of(value)}")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        msg.FromDatetime(dt)
    except (ValueError, OverflowError):  # not a timestamp, or before year 1 once in UTC
        raise CodecError(path, f"expected an RFC 3339 timestamp, got {value!r}") from None


# google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def kind_of(value: Any) -> str:
    """How an error names a JSON value's type ("a string", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def wire_path(desc: _d.Descriptor, path: str, dialect: str = "") -> str:
    """A field path in proto names (as the request validator names a field in errors) as the
    JSON spells it: a tagged union's member is not a key (tools[0].function.name is
    tools[0].name: the function's fields sit beside "type"), an untagged union's member is
    the union's value itself, and a list wrapper its list (input.items.items[0] is input[0]).
    From a segment it cannot follow on (a key inside free-form JSON, or a path already
    written as the JSON spells it), the rest is kept as it is."""
    segments = path.split(".") if path else []
    out, plan, bare = "", _plan(desc, dialect), False
    for at, segment in enumerate(segments):
        name, bracket, index = segment.partition("[")
        index = bracket + index
        if plan is None or plan.desc.full_name in _JSON_WKT or plan.desc.full_name == _TIMESTAMP:
            return _join(out, ".".join(segments[at:]))
        tag = plan.tag_of.get(name) if plan.union is not None else None
        if tag is not None:
            member = plan.member_of[tag]
            if not member.is_message:  # keyed by its tag; untagged, the union's value itself
                out = out if plan.untagged else _join(out, tag) + index
                plan = None
                continue
            inner = _plan(member.fd.message_type, member.dialect)
            bare = plan.untagged and _is_list_wrapper(inner)
            plan = inner
            continue
        f = plan.by_key.get(name)
        if f is None:
            return _join(out, ".".join(segments[at:]))
        out = out + index if bare else _join(out, f.name) + index
        bare = False
        plan = _plan(f.fd.message_type, f.dialect) if f.is_message and not f.is_map else None
    return out


def tagged_union(desc: _d.Descriptor) -> _d.OneofDescriptor | None:
    """The oneof of a tagged union message (options.proto's convention), else None."""
    if desc.full_name in _JSON_WKT or desc.full_name == _TIMESTAMP:
        return None
    plan = _plan(desc)
    return None if plan.untagged else plan.union


def union_member(msg: Message) -> tuple[str, str] | None:
    """(field name, JSON tag) of the set member of a tagged union message, else None."""
    plan = _plan(msg.DESCRIPTOR)
    if plan.union is None:
        return None
    member = msg.WhichOneof(plan.union.name)
    return None if member is None else (member, plan.tag_of[member])


def read_field(msg: Message, field_name: str, value: Any, path: str) -> None:
    """Reads a legacy JSON value into one field of `msg` (e.g. a JSON header's value)."""
    _read_field(value, msg, _plan(msg.DESCRIPTOR).by_key[field_name], path, False)


# Exposed for the gateway, which reads path and query parameters into fields.
def read_scalar_field(msg: Message, field_name: str, raw: str, path: str) -> None:
    """Sets a scalar (or appends to a repeated scalar) field from its query-string text."""
    f = _plan(msg.DESCRIPTOR).by_key[field_name]
    value: Any = raw
    t = f.fd.type
    if f.enum is None:
        if t in _INT_TYPES:
            value = _read_int(raw, t, path)
        elif t in _FLOAT_TYPES:
            try:
                value = float(raw)
            except ValueError:
                raise CodecError(path, f"expected a number, got {raw!r}") from None
        elif t == _FD.TYPE_BOOL:
            if raw not in ("true", "false", "1", "0"):
                raise CodecError(path, f"expected true or false, got {raw!r}")
            value = raw in ("true", "1")
    if f.repeated:
        getattr(msg, field_name).append(_read_scalar(value, f, path))
    else:
        setattr(msg, field_name, _read_scalar(value, f, path))


