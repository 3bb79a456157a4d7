"""The Python client (clients/python) against the real server, sync and async."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from agentd_client import AsyncClient, Client

from agentd.app import SERVICES
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import models_pb2, shields_pb2


async def test_async_client(agentd):
    async with AsyncClient(f"127.0.0.1:{agentd.grpc_port}") as client:
        created = await client.agents.CreateAgent(pb.CreateAgentRequest(
            agent_config=t.AgentConfig(model="test-model", instructions="")))
        got = await client.agents.GetAgent(pb.GetAgentRequest(agent_id=created.agent_id))
        assert got.agent == created.agent
        models = await client.models.ListModels(models_pb2.ListModelsRequest())
        assert [m.id for m in models.data] == ["test-model", "org/test-embed"]


async def test_sync_client(agentd):
    def run():
        with Client(f"127.0.0.1:{agentd.grpc_port}") as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.agents.GetAgent(pb.GetAgentRequest(agent_id="agent_missing"))
            return caught.value.code(), client.agents.ListAgents(pb.ListAgentsRequest()).has_more
    code, has_more = await asyncio.to_thread(run)
    assert code == grpc.StatusCode.NOT_FOUND and has_more is False


async def test_the_client_has_a_stub_for_every_served_service(agentd):
    async with AsyncClient(f"127.0.0.1:{agentd.grpc_port}") as client:
        stubs = {type(v).__name__ for v in vars(client).values()}
        assert stubs >= {f"{s.name}Stub" for s in SERVICES}
        listed = await client.shields.ListShields(shields_pb2.ListShieldsRequest())
        assert list(listed.data) == []  # the test server declares no shields

