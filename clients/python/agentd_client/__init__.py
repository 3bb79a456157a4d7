"""A small typed client for agentd over gRPC: sync and async.

It imports the same generated stubs as the server (`agentd.v1`), so the two can never
disagree on the contract. Usage:

    async with AsyncClient("127.0.0.1:50051") as client:
        created = await client.agents.CreateAgent(CreateAgentRequest(...))

    with Client("127.0.0.1:50051") as client:
        client.models.ListModels(ListModelsRequest())
"""

from __future__ import annotations

import grpc

from agentd.v1 import (
    agents_pb2_grpc,
    conversations_pb2_grpc,
    files_pb2_grpc,
    models_pb2_grpc,
    responses_pb2_grpc,
    shields_pb2_grpc,
    tool_groups_pb2_grpc,
    vector_stores_pb2_grpc,
)

__all__ = ["AsyncClient", "Client"]

# Match the server's keepalive policy (it allows client pings every >= 10 s).
CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]


class _Stubs:
    def _bind(self, channel) -> None:
        self.agents = agents_pb2_grpc.AgentsServiceStub(channel)
        self.responses = responses_pb2_grpc.ResponsesServiceStub(channel)
        self.conversations = conversations_pb2_grpc.ConversationsServiceStub(channel)
        self.vector_stores = vector_stores_pb2_grpc.VectorStoresServiceStub(channel)
        self.files = files_pb2_grpc.FilesServiceStub(channel)
        self.shields = shields_pb2_grpc.ShieldsServiceStub(channel)
        self.tool_groups = tool_groups_pb2_grpc.ToolGroupsServiceStub(channel)
        self.models = models_pb2_grpc.ModelsServiceStub(channel)


class AsyncClient(_Stubs):
    """grpc.aio stubs for every agentd service; create it inside the event loop."""

    def __init__(self, target: str = "127.0.0.1:50051", *,
                 credentials: grpc.ChannelCredentials | None = None):
        self.channel = (grpc.aio.secure_channel(target, credentials, CHANNEL_OPTIONS) if credentials
                        else grpc.aio.insecure_channel(target, CHANNEL_OPTIONS))
        self._bind(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Client(_Stubs):
    """Blocking stubs for every agentd service."""

    def __init__(self, target: str = "127.0.0.1:50051", *,
                 credentials: grpc.ChannelCredentials | None = None):
        self.channel = (grpc.secure_channel(target, credentials, CHANNEL_OPTIONS) if credentials
                        else grpc.insecure_channel(target, CHANNEL_OPTIONS))
        self._bind(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
