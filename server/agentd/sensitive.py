"""Secrets in messages: fields marked with the `sensitive` option (protos/agentd/v1/options.proto)
such as MCP headers and access tokens. They are accepted on input and kept in memory by the run
that needs them; `redact` makes the copy that may be stored or logged. (The codec never writes
them to JSON either.)

The plan of what to clear is computed once per message type: types that cannot hold a secret
are never walked.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor as _d
from google.protobuf.message import Message

from agentd.v1 import options_pb2

__all__ = ["redact"]

@dataclass(slots=True)
class _Redaction:
    sensitive: list[str]  # fields cleared
    nested: list[_d.FieldDescriptor]  # message fields that may hold sensitive fields


_redactions: dict[str, _Redaction | None] = {}
_MISSING = object()


def _redaction(desc: _d.Descriptor) -> _Redaction | None:
    """What redact() clears in a message of `desc`; None when nothing in it can be sensitive."""
    cached = _redactions.get(desc.full_name, _MISSING)
    if cached is not _MISSING:
        return cached
    if desc.full_name.startswith("google.protobuf."):
        _redactions[desc.full_name] = None
        return None
    _redactions[desc.full_name] = _Redaction([], [])  # a cycle is assumed to hold secrets
    sensitive, nested = [], []
    for fd in desc.fields:
        if fd.GetOptions().Extensions[options_pb2.sensitive]:
            sensitive.append(fd.name)
            continue
        target = fd.message_type
        if target is not None and target.GetOptions().map_entry:
            target = target.fields_by_name["value"].message_type
        if target is not None and _redaction(target) is not None:
            nested.append(fd)
    plan = _Redaction(sensitive, nested) if sensitive or nested else None
    _redactions[desc.full_name] = plan
    return plan


def redact(msg: Message) -> Message:
    """`msg` with every `sensitive` field cleared, at any depth: what may be stored or logged.
    A copy when its type can hold a secret (the original keeps them for the run that needs
    them); otherwise `msg` itself, uncopied: do not modify the result."""
    if _redaction(msg.DESCRIPTOR) is None:
        return msg
    copy = type(msg)()
    copy.CopyFrom(msg)
    _redact_in_place(copy)
    return copy


def _redact_in_place(msg: Message) -> None:
    plan = _redaction(msg.DESCRIPTOR)
    if plan is None:
        return
    for name in plan.sensitive:
        msg.ClearField(name)
    for fd in plan.nested:
        value = getattr(msg, fd.name)
        if fd.message_type.GetOptions().map_entry:
            for item in value.values():
                _redact_in_place(item)
        elif fd.is_repeated:
            for item in value:
                _redact_in_place(item)
        elif msg.HasField(fd.name):
            _redact_in_place(value)
