"""Idempotent creates (request_id): a retried create answers what the first one created and
writes nothing new, also when the two run at once; over gRPC and in the stores."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentd.storage import schema
from agentd.storage.agents import AgentStore
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from tests.integration.test_agents_grpc import config, error_of


async def count(db, table) -> int:
    return await db.read(lambda conn: conn.execute(select(func.count()).select_from(table)).scalar())



async def test_a_retried_create_agent_returns_the_first_agent(agents, agentd):
    request = pb.CreateAgentRequest(agent_config=config(), request_id="create-1")
    first = await agents.CreateAgent(request)
    again = await agents.CreateAgent(request)
    assert again.agent_id == first.agent_id and again.agent == first.agent
    other = await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config(), request_id="create-2"))
    assert other.agent_id != first.agent_id
    assert await count(agentd.db, schema.agents) == 2


async def test_creates_without_request_id_are_never_merged(agents, agentd):
    for request_id in (None, None, "", ""):  # empty means none
        await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config(), request_id=request_id))
    assert await count(agentd.db, schema.agents) == 4


async def test_concurrent_creates_with_one_request_id_answer_one_agent(agents, agentd):
    request = pb.CreateAgentRequest(agent_config=config(), request_id="together")
    answers = await asyncio.gather(*(agents.CreateAgent(request) for _ in range(5)))
    assert len({a.agent_id for a in answers}) == 1
    assert await count(agentd.db, schema.agents) == 1


async def test_a_retried_create_session_returns_the_first_session(agents, agentd):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    request = pb.CreateSessionRequest(agent_id=agent_id, session_name="s", request_id="sess-1")
    first = await agents.CreateSession(request)
    again = await agents.CreateSession(request)
    assert again.session_id == first.session_id and again.session == first.session
    # The key is per agent: the same key in another agent makes another session.
    other_agent = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    other = await agents.CreateSession(pb.CreateSessionRequest(agent_id=other_agent, session_name="s",
                                                               request_id="sess-1"))
    assert other.session_id != first.session_id
    assert await count(agentd.db, schema.sessions) == 2


async def test_concurrent_create_sessions_with_one_request_id_answer_one_session(agents, agentd):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    request = pb.CreateSessionRequest(agent_id=agent_id, session_name="s", request_id="together")
    answers = await asyncio.gather(*(agents.CreateSession(request) for _ in range(5)))
    assert len({a.session_id for a in answers}) == 1
    assert await count(agentd.db, schema.sessions) == 1


async def test_a_retried_create_session_of_a_deleted_agent_is_not_found(agents):
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    request = pb.CreateSessionRequest(agent_id=agent_id, session_name="s", request_id="sess-1")
    await agents.CreateSession(request)
    await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id))
    code, reason, _ = await error_of(agents.CreateSession(request))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")


@pytest.mark.parametrize("request_id", ["x" * 256, "a\x00b"])
async def test_bad_request_ids_are_invalid_argument(agents, request_id):
    code, _, fields = await error_of(agents.CreateAgent(
        pb.CreateAgentRequest(agent_config=config(), request_id=request_id)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])
    agent_id = (await agents.CreateAgent(pb.CreateAgentRequest(agent_config=config()))).agent_id
    code, _, fields = await error_of(agents.CreateSession(
        pb.CreateSessionRequest(agent_id=agent_id, session_name="s", request_id=request_id)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])


async def test_the_longest_request_id_is_kept(agents):
    request = pb.CreateAgentRequest(agent_config=config(), request_id="é" * 255)
    first = await agents.CreateAgent(request)
    assert (await agents.CreateAgent(request)).agent_id == first.agent_id


def _agent(agent_id: str) -> t.Agent:
    agent = t.Agent(agent_id=agent_id, agent_config=config())
    agent.created_at.FromMicroseconds(1000)
    return agent


def _session(session_id: str) -> t.AgentSession:
    session = t.AgentSession(session_id=session_id, session_name="s")
    session.started_at.FromMicroseconds(1000)
    return session


async def test_request_ids_are_per_owner(repo):
    store = AgentStore(repo)
    mine = await store.create_agent("alice", _agent("agent_a"), "key")
    theirs = await store.create_agent("bob", _agent("agent_b"), "key")
    assert (mine.agent_id, theirs.agent_id) == ("agent_a", "agent_b")
    assert (await store.create_agent("alice", _agent("agent_c"), "key")).agent_id == "agent_a"


async def test_a_session_under_another_owners_agent_is_refused(repo):
    store = AgentStore(repo)
    await store.create_agent("alice", _agent("agent_a"))
    assert await store.create_session("bob", "agent_a", _session("sess_1"), "key") is None
    assert await count(repo.db, schema.sessions) == 0


async def test_creates_racing_the_deletion_of_their_parent_answer_missing_or_created(repo):
    store = AgentStore(repo)
    for i in range(10):
        await store.create_agent("alice", _agent(f"agent_{i}"))
        created, _ = await asyncio.gather(store.create_session("alice", f"agent_{i}", _session(f"sess_{i}")),
                                          store.delete_agent("alice", f"agent_{i}"))
        assert created is None or created.session_id == f"sess_{i}"
    assert await count(repo.db, schema.sessions) == 0


async def test_an_integrity_error_that_is_not_the_key_nor_a_missing_parent_is_raised(repo):
    """A foreign key that fails although the checked parent exists is a bug, not a NOT_FOUND."""
    await AgentStore(repo).create_agent("alice", _agent("agent_a"))
    with pytest.raises(IntegrityError):
        await repo.create(schema.sessions, key=("agent_id", "request_id"), parent=schema.agents,
                          parent_id="agent_a", id="sess_1", owner="alice", agent_id="agent_gone",
                          request_id="key", created_at=1, body=b"")
