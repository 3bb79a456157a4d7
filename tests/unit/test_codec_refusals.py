"""What JSON can say but a proto cannot hold is a CodecError naming the field (the gateway's
400), never another exception (a 500)."""

from __future__ import annotations

import json

import pytest

from agentd import codec
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import conversations_pb2 as conv
from agentd.v1 import turn_events_pb2 as events


def refusal(value, message_type) -> codec.CodecError:
    with pytest.raises(codec.CodecError) as caught:
        codec.parse(value, message_type)
    # The error can itself be sent: no lone surrogate survives into its text.
    json.dumps([caught.value.field, caught.value.description], ensure_ascii=False).encode()
    return caught.value


def agent(**config):
    return {"agent_config": {"model": "m", "instructions": "x", **config}}


@pytest.mark.parametrize("value, message_type, field", [
    (agent(model="\ud800"), pb.CreateAgentRequest, "agent_config.model"),
    ({"session_name": "a\udfffb"}, pb.CreateSessionRequest, "session_name"),
    (agent(input_shields=["ok", "\ud83d"]), pb.CreateAgentRequest, "agent_config.input_shields[1]"),
    ({"metadata": {"k": "\ud800"}}, conv.CreateConversationRequest, "metadata.k"),
    ({"metadata": {"\ud800": "v"}}, conv.CreateConversationRequest, "metadata.\\ud800"),
    (agent(client_tools=[{"name": "f", "input_schema": {"a": ["\udc00"]}}]), pb.CreateAgentRequest,
     "agent_config.client_tools[0].input_schema.a[0]"),
    (agent(client_tools=[{"name": "f", "input_schema": {"\udc00": 1}}]), pb.CreateAgentRequest,
     "agent_config.client_tools[0].input_schema.\\udc00"),
])
def test_lone_surrogates_are_refused_naming_the_field(value, message_type, field):
    error = refusal(value, message_type)
    assert error.field == field
    assert error.description.startswith("invalid Unicode: a lone surrogate (U+")


def test_a_query_or_path_parameter_with_a_lone_surrogate_is_refused():
    message = pb.GetAgentRequest()
    with pytest.raises(codec.CodecError) as caught:
        codec.read_scalar_field(message, "agent_id", "agent_\ud800", "agent_id")
    assert caught.value.field == "agent_id" and "surrogate" in caught.value.description


def test_a_surrogate_in_an_unknown_key_is_shown_escaped():
    message = pb.CreateSessionRequest()
    with pytest.raises(codec.CodecError) as caught:
        codec.from_json({"session_name": "s", "\ud800": 1}, message, strict=True)
    assert (caught.value.field, caught.value.description) == ("\\ud800", "unknown field")


def test_numbers_beyond_a_double_are_refused():
    error = refusal(agent(sampling_params={"repetition_penalty": 10**400}), pb.CreateAgentRequest)
    assert (error.field, error.description) == ("agent_config.sampling_params.repetition_penalty",
                                                "number out of range")
    error = refusal(agent(client_tools=[{"name": "f", "input_schema": {"max": -10**400}}]),
                    pb.CreateAgentRequest)
    assert error.field == "agent_config.client_tools[0].input_schema.max"


def test_free_form_json_nested_too_deeply_is_refused_without_exhausting_the_stack():
    schema: object = "leaf"
    for _ in range(5000):
        schema = {"k": [schema]}
    error = refusal(agent(client_tools=[{"name": "f", "input_schema": schema}]), pb.CreateAgentRequest)
    assert error.description == "nested deeper than 64 levels"
    assert error.field.startswith("agent_config.client_tools[0].input_schema.k[0].k")


@pytest.mark.parametrize("value", [1e300, -1e300, 253_402_300_800, "0001-01-01T00:00:00+01:00",
                                   "2025-13-01T00:00:00Z", "\ud800"])
def test_timestamps_outside_what_a_timestamp_holds_are_refused(value):
    error = refusal({"turn_id": "turn_1", "started_at": value}, t.Turn)
    assert error.field == "started_at"


def test_timestamps_at_the_limits_are_read():
    assert codec.parse({"started_at": 253_402_300_799}, t.Turn).started_at.seconds == 253_402_300_799
    assert codec.parse({"started_at": "0001-01-01T00:00:00Z"}, t.Turn).started_at.seconds == -62_135_596_800


@pytest.mark.parametrize("value", ["aGk=\u00e9", "\ud800", "not base64!"])
def test_bad_base64_is_refused(value):
    error = refusal({"image": value}, events.ImageDelta)
    assert (error.field, error.description) == ("image", "invalid base64")
