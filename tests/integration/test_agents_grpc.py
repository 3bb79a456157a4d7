"""The agents and sessions RPCs over gRPC, against a real server on SQLite and PostgreSQL."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_status import rpc_status
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from agentd.errors import details_of
from agentd.storage import schema
from agentd.storage.agents import AgentStore
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from tests.conftest import _admin, error_of

_USER_HI = m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(text="hi")))


def config(**fields) -> t.AgentConfig:
    return t.AgentConfig(model=fields.pop("model", "test-model"),
                         instructions=fields.pop("instructions", "Be brief."), **fields)




async def test_create_and_get_agent_normalizes_the_config(agents):
    created = await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config(name="helper")))
    assert created.agent_id.startswith("agent_")
    got = (await agents.GetAgent(pb.GetAgentRequest(agent_id=created.agent_id))).agent
    assert got == created.agent
    cfg = got.agent_config
    assert (cfg.model, cfg.instructions, cfg.name) == ("test-model", "Be brief.", "helper")
    assert cfg.tool_config.tool_choice == "auto"
    assert cfg.tool_config.system_message_behavior == t.SYSTEM_MESSAGE_BEHAVIOR_APPEND
    assert cfg.sampling_params.strategy.WhichOneof("strategy") == "greedy"
    assert cfg.max_infer_iters == 10
    assert got.created_at.seconds > 0


async def test_deprecated_tool_choice_moves_into_tool_config(agents):
    created = await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config(tool_choice="required")))
    assert created.agent.agent_config.tool_config.tool_choice == "required"


@pytest.mark.parametrize("bad, field", [
    (config(model=""), "agent_config.model"),
    (config(tool_choice="required", tool_config=t.AgentToolConfig(tool_choice="auto")),
     "agent_config.tool_choice"),
    (config(tool_prompt_format=t.TOOL_PROMPT_FORMAT_JSON,
            tool_config=t.AgentToolConfig(tool_prompt_format=t.TOOL_PROMPT_FORMAT_PYTHON_LIST)),
     "agent_config.tool_prompt_format"),
    (config(max_infer_iters=-1), "agent_config.max_infer_iters"),
    (config(client_tools=[t.AgentToolDef(name="a"), t.AgentToolDef(name="a")]),
     "agent_config.client_tools[1].name"),
    (config(sampling_params=t.SamplingParams(strategy=t.SamplingStrategy(
        top_p=t.TopPSamplingStrategy(temperature=0)))), "agent_config.sampling_params.strategy.temperature"),
    *[(config(sampling_params=t.SamplingParams(strategy=t.SamplingStrategy(
        top_p=t.TopPSamplingStrategy(temperature=x)))), "agent_config.sampling_params.strategy.temperature")
      for x in (math.inf, math.nan)],
    (config(sampling_params=t.SamplingParams(repetition_penalty=math.inf)),
     "agent_config.sampling_params.repetition_penalty"),
])
async def test_invalid_config_is_invalid_argument_naming_the_field(agents, agentd, bad, field):
    code, reason, fields = await error_of(agents.CreateAgent(pb.CreateAgentRequest(agent_config=bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason == "INVALID_ARGUMENT"
    assert fields == [field]
    count = select(func.count()).select_from(schema.agents)
    # Nothing half-written.
    assert await agentd.db.read(lambda conn, count=count: conn.execute(count).scalar()) == 0


async def test_missing_config_is_invalid_argument(agents):
    code, _, fields = await error_of(agents.CreateAgent(pb.CreateAgentRequest()))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["agent_config"])


async def test_unknown_agent_is_not_found(agents):
    for call in (agents.GetAgent(pb.GetAgentRequest(agent_id="agent_nope")),
                 agents.DeleteAgent(pb.DeleteAgentRequest(agent_id="agent_nope")),
                 agents.CreateSession(pb.CreateSessionRequest(agent_id="agent_nope", session_name="s")),
                 agents.ListSessions(pb.ListSessionsRequest(agent_id="agent_nope"))):
        code, reason, _ = await error_of(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")


async def test_list_agents_pages_in_creation_order_without_gaps(agents):
    ids = [(await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
           for _ in range(5)]
    seen, token, pages = [], "", 0
    while True:
        page = await agents.ListAgents(pb.ListAgentsRequest(page_size=2, page_token=token))
        seen += [a.agent_id for a in page.data]
        pages += 1
        assert page.has_more == bool(page.next_page_token)
        if not page.has_more:
            break
        token = page.next_page_token
    assert seen == ids
    assert pages == 3
    everything = await agents.ListAgents(pb.ListAgentsRequest())
    assert [a.agent_id for a in everything.data] == ids and not everything.has_more


@pytest.mark.parametrize("request_, field", [
    (pb.ListAgentsRequest(page_size=-1), "page_size"),
    (pb.ListAgentsRequest(page_token="garbage!"), "page_token"),
])
async def test_bad_paging_is_invalid_argument(agents, request_, field):
    code, _, fields = await error_of(agents.ListAgents(request_))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_sessions_lifecycle(agents):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    made = [await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent_id, session_name=f"s{i}"))
            for i in range(3)]
    assert all(m.session_id.startswith("sess_") for m in made)
    got = (await agents.GetSession(
        pb.GetSessionRequest(agent_id=agent_id, session_id=made[0].session_id))).session
    assert (got.session_name, list(got.turns)) == ("s0", [])
    assert got.started_at == made[0].session.started_at
    listed = await agents.ListSessions(pb.ListSessionsRequest(agent_id=agent_id, page_size=2))
    assert [s.session_name for s in listed.data] == ["s0", "s1"] and listed.has_more
    await agents.DeleteSession(pb.DeleteSessionRequest(agent_id=agent_id, session_id=made[1].session_id))
    code, reason, _ = await error_of(agents.GetSession(pb.GetSessionRequest(
        agent_id=agent_id, session_id=made[1].session_id)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    rest = await agents.ListSessions(pb.ListSessionsRequest(agent_id=agent_id))
    assert [s.session_name for s in rest.data] == ["s0", "s2"]


async def test_session_of_another_agent_is_not_found(agents):
    a = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    b = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    session_id = (await agents.CreateSession(
        pb.CreateSessionRequest(agent_id=a, session_name="s"))).session_id
    code, _, _ = await error_of(agents.GetSession(pb.GetSessionRequest(agent_id=b, session_id=session_id)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, _ = await error_of(
        agents.DeleteSession(pb.DeleteSessionRequest(agent_id=b, session_id=session_id)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_session_name_is_required(agents):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    code, _, fields = await error_of(agents.CreateSession(pb.CreateSessionRequest(agent_id=agent_id)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["session_name"])


async def test_delete_agent_cascades_to_sessions(agents, agentd):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    for i in range(2):
        await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent_id, session_name=f"s{i}"))
    await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id))
    code, _, _ = await error_of(agents.GetAgent(pb.GetAgentRequest(agent_id=agent_id)))
    assert code == grpc.StatusCode.NOT_FOUND
    left = select(func.count()).select_from(schema.sessions).where(schema.sessions.c.agent_id == agent_id)
    assert await agentd.db.read(lambda conn: conn.execute(left).scalar()) == 0


async def test_unknown_turn_and_step_are_not_found(agents):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    session_id = (await agents.CreateSession(
        pb.CreateSessionRequest(agent_id=agent_id, session_name="s"))).session_id
    code, reason, _ = await error_of(agents.GetTurn(pb.GetTurnRequest(
        agent_id=agent_id, session_id=session_id, turn_id="turn_nope")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "TURN_NOT_FOUND")
    code, _, _ = await error_of(agents.GetStep(pb.GetStepRequest(
        agent_id=agent_id, session_id=session_id, turn_id="turn_nope", step_id="step_x")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_turn_of_an_unknown_session_fails_before_any_event(agents):
    # (Running turns: test_turns.py.)
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    request = dict(agent_id=agent_id, session_id="sess_x", messages=[_USER_HI])
    code, reason, _ = await error_of(agents.CreateTurn(pb.CreateTurnRequest(**request)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    stream = agents.StreamTurn(pb.StreamTurnRequest(**request))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_request_id_comes_back_in_trailing_metadata(agents):
    call = agents.ListAgents(pb.ListAgentsRequest(), metadata=(("x-request-id", "abc-1"),))
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == "abc-1"
    failed = agents.GetAgent(pb.GetAgentRequest(agent_id="agent_x"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await failed
    assert len(dict(caught.value.trailing_metadata())["x-request-id"]) == 16


async def test_paging_survives_the_deletion_of_the_last_item_seen(agents):
    ids = [(await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
           for _ in range(4)]
    first = await agents.ListAgents(pb.ListAgentsRequest(page_size=2))
    await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=first.data[-1].agent_id))
    second = await agents.ListAgents(pb.ListAgentsRequest(page_size=2, page_token=first.next_page_token))
    assert [a.agent_id for a in second.data] == ids[2:] and not second.has_more


async def test_huge_offsets_are_invalid_argument(http):
    response = await http.get("/v1alpha/agents", params={"start_index": str(2**70)})
    assert response.status_code == 400 and "start_index" in response.json()["detail"]


async def _stored_turns(agentd, agent_id: str, session_id: str, count: int) -> list[str]:
    """Turns and steps written through the store, as the turn engine will write them."""
    store = AgentStore(agentd.repo)
    turn_ids = []
    for i in range(count):
        turn = t.Turn(turn_id=f"turn_{i}", session_id=session_id)
        turn.started_at.FromMicroseconds(1000 + i)
        assert await store.insert_turn("local", turn)
        assert await store.append_step("local", turn.turn_id, t.AgentStep(
            inference=t.InferenceStep(turn_id=turn.turn_id, step_id=f"step_{i}")))
        turn.status = t.TURN_STATUS_COMPLETED  # ended: a session holds one open turn at a time
        assert await store.update_turn("local", turn, "completed")
        turn_ids.append(turn.turn_id)
    return turn_ids


async def test_get_session_turn_and_step_read_what_storage_holds(agents, agentd, http):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    session_id = (await agents.CreateSession(
        pb.CreateSessionRequest(agent_id=agent_id, session_name="s"))).session_id
    turn_ids = await _stored_turns(agentd, agent_id, session_id, 3)
    whole = (await agents.GetSession(pb.GetSessionRequest(agent_id=agent_id, session_id=session_id))).session
    assert [turn.turn_id for turn in whole.turns] == turn_ids
    some = await agents.GetSession(pb.GetSessionRequest(agent_id=agent_id, session_id=session_id,
                                                        turn_ids=["turn_2", "turn_0", "turn_x"]))
    assert [turn.turn_id for turn in some.session.turns] == ["turn_0", "turn_2"]
    base = f"/v1alpha/agents/{agent_id}/session/{session_id}"
    for query in ("turn_ids=turn_0,turn_2", "turn_ids=turn_0&turn_ids=turn_2"):  # both SDK forms
        body = (await http.get(f"{base}?{query}")).json()
        assert [turn["turn_id"] for turn in body["turns"]] == ["turn_0", "turn_2"]
    turn = (await http.get(f"{base}/turn/turn_1")).json()
    assert turn["turn_id"] == "turn_1" and turn["steps"][0]["step_type"] == "inference"
    step = (await http.get(f"{base}/turn/turn_1/step/step_1")).json()
    assert step == {"step": turn["steps"][0]}


async def test_delete_agent_cascades_to_turns_and_steps(agents, agentd):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    session_id = (await agents.CreateSession(
        pb.CreateSessionRequest(agent_id=agent_id, session_name="s"))).session_id
    await _stored_turns(agentd, agent_id, session_id, 2)
    await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id))
    for table in (schema.sessions, schema.turns, schema.steps):
        count = select(func.count()).select_from(table)
        assert await agentd.db.read(lambda conn, count=count: conn.execute(count).scalar()) == 0, table.name


async def test_ids_with_nul_are_invalid_argument(agents, http):
    code, _, fields = await error_of(agents.GetAgent(pb.GetAgentRequest(agent_id="agent\x00x")))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["agent_id"])
    assert (await http.get("/v1alpha/agents/ab%00cd")).status_code == 400


@pytest.mark.parametrize("call", ["read", "write"])
async def test_a_lost_database_connection_costs_no_call(agents, database_url, call):
    """Every pooled connection cut by the server (a restart, a failover, an idle timeout):
    the first call finds its connection dead and runs once more on a fresh one."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connections can be cut from outside; an SQLite file cannot")
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    database = make_url(database_url).database
    await _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")
    for _ in range(3):
        if call == "read":
            got = await agents.GetAgent(pb.GetAgentRequest(agent_id=agent_id))
            assert got.agent.agent_id == agent_id
        else:
            await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent_id, session_name="s"))
    listed = await agents.ListSessions(pb.ListSessionsRequest(agent_id=agent_id))
    assert len(listed.data) == (3 if call == "write" else 0)


# The generic validator (agentd.validation) runs before every servicer method: REQUIRED
# fields of the contract are checked there, by their proto path.

async def test_a_turn_without_messages_is_invalid_argument(agents):
    code, reason, fields = await error_of(agents.CreateTurn(pb.CreateTurnRequest(
        agent_id="agent_x", session_id="sess_x")))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["messages"])


async def test_a_streamed_turn_is_validated_before_it_starts(agents):
    stream = agents.StreamTurn(pb.StreamTurnRequest(agent_id="agent_x", session_id="sess_x",
                                                    messages=[m.TurnInputMessage(user=m.UserMessage())]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    reason, fields = details_of(rpc_status.from_call(caught.value))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (reason, fields) == ("INVALID_ARGUMENT", ["messages[0].user.content"])


async def test_a_missing_id_is_named_before_anything_is_looked_up(agents):
    code, _, fields = await error_of(agents.GetSession(pb.GetSessionRequest(agent_id="agent_x")))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["session_id"])


@pytest.mark.parametrize("method, streaming", [("GetAgent", False), ("StreamTurn", True)])
async def test_a_request_that_does_not_decode_is_invalid_argument_with_details(channel, method, streaming):
    # Bytes that are no GetAgentRequest / StreamTurnRequest (field 1 holds invalid UTF-8):
    # grpc answered a bare UNKNOWN when the generated code's decoder raised.
    path = f"/agentd.v1.AgentsService/{method}"
    call = (channel.unary_stream(path) if streaming else channel.unary_unary(path))(b"\x0a\x03\xff\xfe\xfd")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in call:
                pass
        else:
            await call
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"the request is not a valid {method}Request")
    reason, _ = details_of(rpc_status.from_call(error))
    assert reason == "INVALID_ARGUMENT"
    metadata = dict(await call.trailing_metadata()) | dict(await call.initial_metadata())
    assert metadata["x-request-id"]
