"""Hypothesis strategies for agentd's legacy JSON.

Pure random JSON stops at the first "expected an object"; these values are shaped like a
message's legacy JSON (its keys, union tags, enum texts, nesting) so that they reach the deep
paths, with hostile leaves mixed in: wrong types, nulls, lone surrogates, huge numbers, deep
nesting. `level` says how hostile: 0 clean values (for the round-trip property), 1 the right
shape with nasty leaves (strings with NUL or lone surrogates, edge numbers: what gets through
to the servicers and storage), 2 anything anywhere.
"""

from __future__ import annotations

import base64
import importlib
import os
import pkgutil
from functools import cache

from google.protobuf import descriptor as _d
from hypothesis import strategies as st

import agentd.v1
from agentd import codec

_FD = _d.FieldDescriptor


def budget(examples: int) -> int:
    """max_examples for a fuzz test: small in `make test` (the whole fuzz stays under a
    minute on two cores); AGENTD_FUZZ=deep multiplies it for a longer hunt by hand."""
    return examples * 50 if os.environ.get("AGENTD_FUZZ") == "deep" else examples

# Lone UTF-16 halves: valid in JSON as escapes, not encodable as UTF-8.
SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\ud83d", "ok \ud83d\ude00 \udbff"])
ODD_TEXT = st.sampled_from(["", " ", "\x00", "a\x00b", "\u2028", "é", "日本", "\U0001f600", "x" * 3000,
                            "1e999", "-0", "NaN", "true", "null", "%00", "\\", '"', "agent_", "%ZZ"])
CLEAN_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "é", "日本", "\U0001f600", "a b"]))
TEXT = st.one_of(CLEAN_TEXT, SURROGATES, ODD_TEXT)
NUMBERS = st.one_of(
    st.integers(min_value=-2**40, max_value=2**40),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**63 - 1,
                     10**30, 10**400, -10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, -0.0, 1e20, 3.4e38, 3.5e38]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
ANY_JSON = st.recursive(
    SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)),
    max_leaves=10)


def _nest(depth: int, as_list: bool):
    value: object = "leaf"
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


DEEP = st.builds(_nest, st.integers(min_value=50, max_value=900), st.booleans())
HOSTILE = st.one_of(ANY_JSON, DEEP)
CLEAN_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**53, max_value=2**53),
              st.floats(allow_nan=False, allow_infinity=False, width=64), CLEAN_TEXT),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(CLEAN_TEXT, kids, max_size=3)),
    max_leaves=8)
TIMESTAMPS = st.datetimes(timezones=st.just(__import__("datetime").timezone.utc)).map(
    lambda dt: dt.isoformat().replace("+00:00", "Z"))


def all_message_types() -> list[type]:
    """Every message class in agentd.v1 (nested ones too, map entries excepted)."""
    found: dict[str, type] = {}

    def visit(cls) -> None:
        if cls.DESCRIPTOR.GetOptions().map_entry:
            return
        found[cls.DESCRIPTOR.full_name] = cls
        for nested in cls.DESCRIPTOR.nested_types:
            visit(getattr(cls, nested.name))

    for info in pkgutil.iter_modules(agentd.v1.__path__):
        if info.name.endswith("_pb2") and info.name != "options_pb2":
            module = importlib.import_module(f"agentd.v1.{info.name}")
            for desc in module.DESCRIPTOR.message_types_by_name.values():
                visit(getattr(module, desc.name))
    return [found[name] for name in sorted(found)]


def _int_range(t: int) -> tuple[int, int]:
    if t in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32):
        return -2**31, 2**31 - 1
    if t in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32):
        return 0, 2**32 - 1
    if t in (_FD.TYPE_UINT64, _FD.TYPE_FIXED64):
        return 0, 2**64 - 1
    return -2**63, 2**63 - 1


def _scalar(fd: _d.FieldDescriptor, level: int):
    t = fd.type
    if fd.enum_type is not None:
        texts = sorted(v for v in codec._enum_plan(fd.enum_type).from_text if not v.isupper())
        valid = st.sampled_from(texts) if texts else st.nothing()
        return st.one_of(valid, TEXT) if level == 2 else valid
    if t == _FD.TYPE_STRING:
        # Mostly non-empty: "" is refused as missing by most required fields.
        words = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
        return st.one_of(words, TEXT) if level else words
    if t == _FD.TYPE_BOOL:
        return st.booleans()
    if t == _FD.TYPE_BYTES:
        valid = st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode())
        return st.one_of(valid, TEXT) if level == 2 else valid
    if t in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        clean = st.floats(allow_nan=False, allow_infinity=False, width=32 if t == _FD.TYPE_FLOAT else 64)
        return st.one_of(clean, NUMBERS) if level else clean
    lo, hi = _int_range(t)
    # Small values mostly: they are the ones that get past the servicers' own limits.
    valid = st.one_of(st.integers(min_value=max(lo, -3), max_value=min(hi, 300)), st.integers(lo, hi))
    if level == 2:
        return st.one_of(valid, NUMBERS, st.integers(lo, hi).map(str))
    return st.one_of(valid, st.sampled_from([lo, hi])) if level else valid


def _value(fd: _d.FieldDescriptor, level: int, depth: int):
    """One value of the field (one element for a repeated field)."""
    if fd.message_type is not None:
        return message_json(fd.message_type, level, depth + 1)
    return _scalar(fd, level)


def _field(f, level: int, depth: int):
    fd = f.fd
    if f.is_map:
        entry = fd.message_type
        key_fd, value_fd = entry.fields_by_name["key"], entry.fields_by_name["value"]
        keys = (TEXT if level else CLEAN_TEXT) if key_fd.type == _FD.TYPE_STRING else \
            st.one_of(st.integers().map(str), TEXT) if level == 2 else st.integers(-5, 5).map(str)
        shaped = st.dictionaries(keys, _value(value_fd, level, depth), max_size=3)
    elif f.repeated:
        shaped = st.lists(_value(fd, level, depth), max_size=3)
    else:
        shaped = _value(fd, level, depth)
    return st.one_of(shaped, HOSTILE) if level == 2 else shaped


@cache
def message_json(desc: _d.Descriptor, level: int = 2, depth: int = 0):
    """A strategy for the legacy JSON of `desc`: mostly its shape, with hostile leaves."""
    name = desc.full_name
    if name == "google.protobuf.Struct":
        shaped = st.dictionaries(CLEAN_TEXT, CLEAN_JSON, max_size=3)
        if level == 1:
            return st.one_of(shaped, st.dictionaries(TEXT, ANY_JSON, max_size=3))
        return st.one_of(shaped, st.dictionaries(TEXT, HOSTILE, max_size=3), HOSTILE) if level else shaped
    if name in ("google.protobuf.Value", "google.protobuf.ListValue"):
        shaped = CLEAN_JSON if name.endswith("Value") and not name.endswith("ListValue") else \
            st.lists(CLEAN_JSON, max_size=3)
        return st.one_of(shaped, ANY_JSON if level == 1 else HOSTILE) if level else shaped
    if name == "google.protobuf.Timestamp":
        clean = st.one_of(TIMESTAMPS, st.integers(0, 2**32))
        return st.one_of(clean, NUMBERS, TEXT) if level == 2 else clean
    if depth > 3:
        return HOSTILE if level == 2 else st.just({})
    plan = codec._plan(desc)
    # Below level 2, half the objects have every field, so that values get past "required"
    # to the deeper checks and to storage (the protos do not mark required fields).
    fields = {f.name: _field(f, level, depth) for f in plan.fields}
    own = st.fixed_dictionaries({}, optional=fields)
    if level < 2:
        own = st.one_of(st.fixed_dictionaries(fields), own)
    if plan.union is None:
        shaped = own
    elif plan.untagged:
        shaped = st.one_of(*[_untagged(m, level, depth) for m in plan.members])
    else:
        shaped = st.one_of(*[_tagged(plan, tag, m, own, level, depth) for tag, m in plan.member_of.items()])
    if level < 2:
        return shaped
    extra = st.dictionaries(TEXT, ANY_JSON, max_size=2)
    return st.one_of(shaped, st.tuples(shaped, extra).map(_merge), HOSTILE)


def _merge(pair):
    shaped, extra = pair
    return {**extra, **shaped} if isinstance(shaped, dict) else shaped


def _untagged(member, level: int, depth: int):
    if member.is_message:
        inner = codec._plan(member.fd.message_type)
        if codec._is_list_wrapper(inner):
            return st.lists(_value(inner.fields[0].fd, level, depth + 1), max_size=3)
    return _value(member.fd, level, depth)


def _tagged(plan, tag: str, member, own, level: int, depth: int):
    discriminator = plan.discriminator

    def build(parts):
        fields, body = parts
        if member.is_message:
            out = dict(body) if isinstance(body, dict) else {"_": body}
        else:
            out = {tag: body}
        out.update(fields)
        out[discriminator] = tag
        return out

    return st.tuples(own, _value(member.fd, level, depth)).map(build)
