"""Shield steps in turns (engine/shields.py, the turn loop) against a real agentd with shields
declared in configuration: where the shield_call steps come (agents_inventory.md §3), what they
hold, how they are stored and served over REST, and the refusal of a shield configuration
does not declare. No shield is run for real yet, so no check here finds a violation (the
violation paths: tests/unit/test_turn_shields.py)."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
import pytest_asyncio

from agentd.context import LOCAL_PRINCIPAL
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from tests.conftest import error_of, fake_model_providers, make_settings, running
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.integration.test_turns import (
    collect,
    kinds,
    new_session,
    stream_turn,
    terminal_turn,
    tool_def,
    user,
)

SHIELDS = [
    {"id": "guard-in", "provider_id": "llama-guard"},
    {"id": "guard-out", "provider_id": "llama-guard"},
]



@pytest_asyncio.fixture
async def agentd(database_url, tmp_path, fake):
    """The shared agentd fixture (and so `agents`), with the shields declared and the fake model."""
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake), shields=SHIELDS)
    async with running(settings) as server:
        yield server


# The events of one shielded model call: the input check, the inference, the output check.
SHIELDED_INFERENCE = [
    "step_start:shield_call",
    "step_complete:shield_call",
    "step_start:inference",
    "step_complete:inference",
    "step_start:shield_call",
    "step_complete:shield_call",
]


def step_kinds(events) -> list[str]:
    """kinds() without the streamed deltas."""
    return [k for k in kinds(events) if not k.startswith("step_progress")]


def shield_steps(turn: t.Turn) -> list[t.ShieldCallStep]:
    return [s.shield_call for s in turn.steps if s.HasField("shield_call")]


async def test_input_and_output_shields_each_give_one_step_around_the_answer(agents, fake):
    fake.script(Reply(text="Hello"))
    agent_id, session_id = await new_session(agents, input_shields=["guard-in"], output_shields=["guard-out"])
    events = await collect(stream_turn(agents, agent_id, session_id, user("hi")))
    assert step_kinds(events) == ["turn_start", *SHIELDED_INFERENCE, "turn_complete"]
    starts = [e.payload.step_start for e in events if e.payload.HasField("step_start")]
    assert [dict(s.metadata) for s in starts] == [
        {"touchpoint": "user-input"},
        {},
        {"touchpoint": "assistant-output"},
    ]
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.stop_reason == t.TURN_STOP_REASON_END_OF_TURN
    assert turn.output_message.content.text == "Hello"
    assert [s.WhichOneof("step") for s in turn.steps] == ["shield_call", "inference", "shield_call"]
    step_ids = [s.step_id for s in starts]
    assert len(set(step_ids)) == 3 and all(i.startswith("step_") for i in step_ids)
    first, last = shield_steps(turn)
    assert (first.touchpoint, first.shield_id, first.step_id) == (
        t.SHIELD_TOUCHPOINT_USER_INPUT,
        "guard-in",
        step_ids[0],
    )
    assert (last.touchpoint, last.shield_id, last.step_id) == (
        t.SHIELD_TOUCHPOINT_ASSISTANT_OUTPUT,
        "guard-out",
        step_ids[2],
    )
    assert not first.HasField("violation") and not last.HasField("violation")
    assert (
        first.turn_id == turn.turn_id
        and first.completed_at.ToMicroseconds() >= first.started_at.ToMicroseconds()
    )
    stored = await agents.GetTurn(
        pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn.turn_id)
    )
    assert stored.turn == turn
    step = await agents.GetStep(
        pb.GetStepRequest(agent_id=agent_id, session_id=session_id, turn_id=turn.turn_id, step_id=step_ids[0])
    )
    assert step.step.shield_call == first
    # The model saw only the conversation, nothing of the shields.
    assert [msg["role"] for msg in fake.chat_requests[0].body["messages"]] == ["system", "user"]


async def test_a_paused_turn_runs_output_shields_before_pausing_and_input_shields_on_resume(agents, fake):
    fake.script(
        Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="c1")]), Reply(text="Sunny.")
    )
    agent_id, session_id = await new_session(
        agents,
        input_shields=["guard-in"],
        output_shields=["guard-out"],
        client_tools=[tool_def("get_weather")],
    )
    first = await collect(stream_turn(agents, agent_id, session_id, user("weather?")))
    assert step_kinds(first) == ["turn_start", *SHIELDED_INFERENCE, "turn_awaiting_input"]
    turn_id = first[0].payload.turn_start.turn_id
    resumed = await collect(
        agents.StreamResumeTurn(
            pb.StreamResumeTurnRequest(
                agent_id=agent_id,
                session_id=session_id,
                turn_id=turn_id,
                tool_responses=[
                    m.AgentToolResponse(
                        call_id="c1", tool_name="get_weather", content=m.InterleavedContent(text="20C")
                    )
                ],
            )
        )
    )
    assert step_kinds(resumed) == [
        "step_complete:tool_execution",
        *SHIELDED_INFERENCE,
        "turn_complete",
    ]
    turn = terminal_turn(resumed)
    assert [s.touchpoint for s in shield_steps(turn)] == [
        t.SHIELD_TOUCHPOINT_USER_INPUT,
        t.SHIELD_TOUCHPOINT_ASSISTANT_OUTPUT,
        t.SHIELD_TOUCHPOINT_USER_INPUT,
        t.SHIELD_TOUCHPOINT_ASSISTANT_OUTPUT,
    ]
    assert len({s.step_id for s in shield_steps(turn)}) == 4
    # History rebuilt from the steps: the shield steps add no message.
    assert [msg["role"] for msg in fake.chat_requests[1].body["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
    ]


async def test_shield_steps_over_rest_have_the_llama_stack_shape(agentd, agents, fake):
    fake.script(Reply(text="Hi"))
    agent_id, session_id = await new_session(agents, input_shields=["guard-in"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agentd.http_port}", timeout=30) as http:
        response = await http.post(
            f"/v1alpha/agents/{agent_id}/session/{session_id}/turn",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
    assert response.status_code == 200
    payloads = [
        json.loads(line[len("data: ") :])["event"]["payload"]
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    start, complete = payloads[1], payloads[2]
    assert start == {
        "event_type": "step_start",
        "step_type": "shield_call",
        "step_id": start["step_id"],
        "metadata": {"touchpoint": "user-input"},
    }
    assert complete["event_type"] == "step_complete" and complete["step_type"] == "shield_call"
    details = complete["step_details"]
    assert details["step_type"] == "shield_call" and details["step_id"] == start["step_id"]
    assert details["violation"] is None
    assert details["touchpoint"] == "user-input" and details["shield_id"] == "guard-in"


async def test_a_shield_configuration_does_not_declare_is_not_found_before_the_turn(agentd, agents, fake):
    for config in ({"input_shields": ["guard-in", "nope"]}, {"output_shields": ["nope"]}):
        agent_id, session_id = await new_session(agents, **config)
        code, reason, _ = await error_of(collect(stream_turn(agents, agent_id, session_id, user("hi"))))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SHIELD_NOT_FOUND")
        request = pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("hi")])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agents.CreateTurn(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "Shield 'nope' not found."
        assert await agentd.agent_store.session_turn_statuses(LOCAL_PRINCIPAL, session_id) == []
    assert fake.chat_requests == []
