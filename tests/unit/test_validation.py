"""The generic request validator (agentd.validation): field_behavior REQUIRED is enforced
with the offending field's path, OUTPUT_ONLY is cleared, on real contract messages."""

from __future__ import annotations

import pytest

from agentd import validation
from agentd.errors import InvalidArgument
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import response_items_pb2 as items
from agentd.v1 import shields_pb2

HI = m.InterleavedContent(text="hi")


def violation(request) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validation.validate(request)
    assert caught.value.reason == "INVALID_ARGUMENT"
    [(field, description)] = caught.value.field_violations
    assert description == "required"
    return field


@pytest.mark.parametrize("request_, field", [
    (pb.GetAgentRequest(), "agent_id"),  # string
    (pb.CreateAgentRequest(), "agent_config"),  # message
    (pb.CreateAgentRequest(agent_config=t.AgentConfig()), "agent_config.model"),  # nested
    (pb.CreateTurnRequest(agent_id="a", session_id="s"), "messages"),  # repeated
    (items.ResponseMessage(content=items.ResponseMessageContent(text="hi")), "role"),  # enum
    (pb.CreateSessionRequest(session_name="s"), "agent_id"),  # the first, in field order
    # the set member of a oneof, inside a repeated field
    (pb.CreateTurnRequest(agent_id="a", session_id="s", messages=[
        m.TurnInputMessage(user=m.UserMessage(content=HI)),
        m.TurnInputMessage(tool=m.ToolResponseMessage(content=HI))]), "messages[1].tool.call_id"),
    (pb.CreateAgentRequest(agent_config=t.AgentConfig(model="m", client_tools=[
        t.AgentToolDef(name="a"), t.AgentToolDef()])), "agent_config.client_tools[1].name"),
])
def test_a_missing_required_field_is_named_by_its_path(request_, field):
    assert violation(request_) == field


def test_a_complete_request_passes_unchanged():
    request = pb.CreateTurnRequest(agent_id="a", session_id="s",
                                   messages=[m.TurnInputMessage(user=m.UserMessage(content=HI))])
    before = request.SerializeToString()
    validation.validate(request)
    assert request.SerializeToString() == before


def test_oneof_members_not_chosen_are_not_required():
    """ToolResponseMessage.call_id is REQUIRED, but only matters when `tool` is the member."""
    validation.validate(m.TurnInputMessage(user=m.UserMessage(content=HI)))


def test_scalars_without_presence_are_not_checked():
    """bool and numbers cannot be told unset from zero in proto3."""
    validation.validate(pb.CreateAgentRequest(agent_config=t.AgentConfig(model="m", max_infer_iters=0)))


def test_output_only_fields_are_cleared_not_refused():
    """AIP-203: a client echoing a resource back must not fail on its output-only fields."""
    shield = shields_pb2.Shield(identifier="x", provider_id="p")
    shield.params.update({"a": 1})
    validation.validate(shield)
    assert shield == shields_pb2.Shield()


def test_output_only_fields_are_cleared_in_nested_messages():
    session = t.AgentSession(session_id="sess_1", session_name="s")
    session.started_at.GetCurrentTime()
    validation.validate(session)
    assert (session.session_id, session.HasField("started_at"), session.session_name) == ("", False, "s")


def test_the_plan_is_computed_once_per_message_type():
    validation.validate(pb.GetAgentRequest(agent_id="a"))
    plan = validation._plans[pb.GetAgentRequest.DESCRIPTOR]
    validation.validate(pb.GetAgentRequest(agent_id="b"))
    assert validation._plans[pb.GetAgentRequest.DESCRIPTOR] is plan


def test_types_with_nothing_to_check_are_skipped():
    """Struct/Value (free-form JSON, recursive) carry no field_behavior: never walked."""
    validation.validate(pb.CreateAgentRequest(agent_config=t.AgentConfig(model="m")))
    from google.protobuf import struct_pb2
    assert validation._plans[struct_pb2.Struct.DESCRIPTOR] is None
