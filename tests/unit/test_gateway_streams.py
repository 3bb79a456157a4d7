"""The gateway's SSE streams: event framing, an error after the stream started, and a client
that goes away. The turn engine does not exist yet, so a scripted AgentsService stands in
for the servicer behind a real gateway (uvicorn on an ephemeral port)."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest_asyncio

from agentd.app import SERVICES
from agentd.errors import NotFound
from agentd.gateway.server import GatewayServer
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc
from agentd.v1 import turn_events_pb2 as events


def event(n: int) -> pb.StreamTurnResponse:
    delta = events.ContentDelta(text=events.TextDelta(text=f"word{n} "))
    return pb.StreamTurnResponse(event=events.TurnEvent(sequence_number=n, payload=events.TurnEventPayload(
        step_progress=events.StepProgressPayload(step_type=t.AGENT_STEP_TYPE_INFERENCE, step_id="step_1",
                                                 delta=delta))))


class ScriptedAgents(agents_pb2_grpc.AgentsServiceServicer):
    def __init__(self):
        self.closed = asyncio.Event()

    async def StreamTurn(self, request, context):
        if request.session_id == "sess_missing":
            raise NotFound("session", request.session_id)
        try:
            for n in range(1, 1_000_000):
                if request.session_id == "sess_fails" and n == 3:
                    raise NotFound("turn", "turn_gone")
                yield event(n)
                if request.session_id == "sess_endless":
                    await asyncio.sleep(0.01)
                elif n == 3:
                    return
        finally:
            self.closed.set()


@pytest_asyncio.fixture
async def gateway():
    servicer = ScriptedAgents()
    server = GatewayServer("127.0.0.1:0", SERVICES, {"agentd.v1.AgentsService": servicer})
    port = await server.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield client, servicer
    await server.stop(0)


# A valid turn: requests are validated (field_behavior REQUIRED) before the servicer runs.
TURN_BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def turn_path(session_id: str) -> str:
    return f"/v1alpha/agents/agent_1/session/{session_id}/turn"


def data_lines(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.split("\n") if line.startswith("data: ")]


async def test_events_are_sse_data_lines_in_order(gateway):
    client, servicer = gateway
    response = await client.post(turn_path("sess_ok"), json=TURN_BODY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    events = data_lines(response.text)
    assert [e["event"]["sequence_number"] for e in events] == [1, 2, 3]
    assert events[0]["event"]["payload"] == {"event_type": "step_progress", "step_type": "inference",
                                             "step_id": "step_1", "delta": {"type": "text", "text": "word1 "}}
    assert servicer.closed.is_set()


async def test_failure_before_the_first_event_gets_its_http_status(gateway):
    client, _ = gateway
    response = await client.post(turn_path("sess_missing"), json=TURN_BODY)
    assert response.status_code == 404
    assert response.json() == {"detail": "Session 'sess_missing' not found."}


async def test_failure_mid_stream_ends_with_an_error_event(gateway):
    client, servicer = gateway
    response = await client.post(turn_path("sess_fails"), json=TURN_BODY)
    assert response.status_code == 200
    events = data_lines(response.text)
    assert [e["event"]["sequence_number"] for e in events[:-1]] == [1, 2]
    assert events[-1] == {"error": {"message": "404: Turn 'turn_gone' not found."}}
    assert servicer.closed.is_set()


async def test_a_client_that_goes_away_stops_the_servicer(gateway):
    client, servicer = gateway
    async with client.stream("POST", turn_path("sess_endless"), json=TURN_BODY) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break
    await asyncio.wait_for(servicer.closed.wait(), timeout=5)


async def test_accepted_gateway_connections_have_nagle_off():
    """With Nagle on, every small response waits for the client's delayed ACK (~40 ms)."""
    from agentd.gateway.server import _listening_socket

    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(
        Probe, sock=_listening_socket(socket.AF_INET, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(accepted, 5) != 0
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_the_running_gateway_listens_on_a_tcp_proto_socket():
    """What makes the accepted sockets above get TCP_NODELAY: the gateway's own listener."""
    server = GatewayServer("127.0.0.1:0", SERVICES, {"agentd.v1.AgentsService": ScriptedAgents()})
    await server.start()
    try:
        assert server.socket.proto == socket.IPPROTO_TCP
    finally:
        await server.stop(0)
