"""Fuzzing the codec: for every message type in agentd.v1, any JSON value either reads or
raises CodecError (nothing else escapes, so the gateway can always answer 400), and a value
that reads comes back, through to_json, as an equal message."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd import codec
from agentd.sensitive import redact
from tests.fuzz.strategies import ANY_JSON, DEEP, all_message_types, budget, message_json

MESSAGE_TYPES = all_message_types()
IDS = [m.DESCRIPTOR.full_name.removeprefix("agentd.v1.") for m in MESSAGE_TYPES]


def _read(message_type, value, strict: bool = False):
    message = message_type()
    codec.from_json(value, message, strict=strict)
    return message


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=IDS)
@settings(max_examples=budget(10))
@given(data=st.data())
def test_from_json_raises_only_codec_errors(message_type, data):
    desc = message_type.DESCRIPTOR
    value = data.draw(st.one_of(message_json(desc), message_json(desc, 1),
                                   ANY_JSON, DEEP))
    strict = data.draw(st.booleans())
    try:
        message = _read(message_type, value, strict)
    except codec.CodecError as e:
        # The error is itself writable as JSON/UTF-8: the gateway sends it to the client.
        json.dumps({"field": e.field, "description": e.description}, ensure_ascii=False).encode()
        return
    message.SerializeToString()  # what reads is storable


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=IDS)
@settings(max_examples=budget(6))
@given(data=st.data())
def test_what_reads_round_trips(message_type, data):
    value = data.draw(message_json(message_type.DESCRIPTOR, 0))
    try:
        message = _read(message_type, value)
    except codec.CodecError:
        return  # clean shapes can still break a rule (e.g. an empty union); not this property
    written = codec.to_json(message)
    # Secrets (`sensitive` fields) are read but never written: they do not come back.
    assert _read(message_type, json.loads(json.dumps(written))) == redact(message)


@pytest.mark.parametrize("field, value", [
    ("agent_config.model", "\ud800"),
    ("agent_config.instructions", "ok \udfff"),
])
def test_a_lone_surrogate_is_a_codec_error_naming_the_field(field, value):
    from agentd.v1 import agents_pb2 as pb

    _, name = field.split(".")
    body = {"agent_config": {"model": "m", "instructions": "x", name: value}}
    with pytest.raises(codec.CodecError) as caught:
        _read(pb.CreateAgentRequest, body)
    assert caught.value.field == field and "surrogate" in caught.value.description
