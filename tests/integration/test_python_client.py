"""The Python client (clients/python) against a real agentd, sync and async, with the
scripted fake model as the only fake."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from agentd_client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    NotFoundError,
    TurnFailedError,
    turns,
)
from google.protobuf import json_format

from agentd.app import SERVICES, Agentd
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import models_pb2, responses_pb2, shields_pb2
from tests.conftest import make_settings
from tests.fakes.openai_server import Reply, ToolCallSpec


@pytest_asyncio.fixture
async def target(database_url, tmp_path, fake):
    providers = [{"id": "fake", "type": "openai", "base_url": fake.base_url,
                  "models": [{"id": "test-model"}]}]
    server = Agentd(make_settings(database_url, tmp_path, providers=providers))
    await server.start()
    try:
        yield f"127.0.0.1:{server.grpc_port}"
    finally:
        await server.stop(0)


def client_tool(name: str) -> t.AgentToolDef:
    schema = json_format.ParseDict({"type": "object", "properties": {"city": {"type": "string"}}},
                                   t.AgentToolDef().input_schema)
    return t.AgentToolDef(name=name, description=f"the {name} tool", input_schema=schema)


async def new_session(client: AsyncClient) -> tuple[str, str]:
    """An agent with two client tools, get_weather and get_time, and a session of it."""
    agent = await client.agents.CreateAgent(pb.CreateAgentRequest(agent_config=t.AgentConfig(
        model="test-model", instructions="Be brief.",
        client_tools=[client_tool("get_weather"), client_tool("get_time")])))
    session = await client.agents.CreateSession(
        pb.CreateSessionRequest(agent_id=agent.agent_id, session_name="s"))
    return agent.agent_id, session.session_id


async def test_async_client_calls_and_lists(target):
    async with AsyncClient(target) as client:
        created = await client.agents.CreateAgent(pb.CreateAgentRequest(
            agent_config=t.AgentConfig(model="test-model", instructions="")))
        got = await client.agents.GetAgent(pb.GetAgentRequest(agent_id=created.agent_id), timeout=10)
        assert got.agent == created.agent
        models = await client.models.ListModels(models_pb2.ListModelsRequest())
        assert [m.id for m in models.data] == ["test-model"]


async def test_errors_carry_the_code_the_reason_the_fields_and_the_request_id(target):
    async with AsyncClient(target) as client:
        with pytest.raises(NotFoundError) as missing:
            await client.agents.GetAgent(pb.GetAgentRequest(agent_id="agent_missing"), request_id="req-42")
        with pytest.raises(InvalidArgumentError) as invalid:
            await client.agents.CreateAgent(pb.CreateAgentRequest(agent_config=t.AgentConfig()))
    assert missing.value.code.name == "NOT_FOUND"
    assert (missing.value.reason, missing.value.domain) == ("AGENT_NOT_FOUND", "agentd.dev")
    assert missing.value.request_id == "req-42"
    assert invalid.value.reason == "INVALID_ARGUMENT"
    assert "agent_config.model" in [v.field for v in invalid.value.field_violations]


async def test_sync_client_runs_a_turn_with_a_client_tool_through_two_pauses(target, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"})]),
                Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Rome"})]),
                Reply(text="Sunny in both."))
    async with AsyncClient(target) as client:
        agent_id, session_id = await new_session(client)
    asked, events = [], []

    def get_weather(city: str) -> dict:
        asked.append(city)
        return {"city": city, "sky": "sunny"}

    def run():
        with Client(target, token="dev-token", timeout=10) as client:
            return client.run_turn(agent_id, session_id, "Weather in Paris and Rome?",
                                   tools={"get_weather": get_weather}, on_event=events.append, timeout=30)
    turn = await asyncio.to_thread(run)
    assert asked == ["Paris", "Rome"]
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.output_message.content.text == "Sunny in both."
    # One turn, one event sequence across both resumes.
    assert {e.turn_id for e in events} == {turn.turn_id}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    tool_message = fake.chat_requests[1].messages[-1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"])["city"] == "Paris"


async def test_async_run_turn_tells_the_model_of_a_failing_or_missing_tool(target, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Oslo"}),
                                  ToolCallSpec("get_time", {})]),
                Reply(text="Sorry."))

    async def get_weather(city: str) -> str:
        raise RuntimeError(f"no station in {city}")

    async with AsyncClient(target) as client:
        agent_id, session_id = await new_session(client)
        turn = await client.run_turn(agent_id, session_id, "Weather?", tools={"get_weather": get_weather})
    assert turn.status == t.TURN_STATUS_COMPLETED
    execution = next(s.tool_execution for s in turn.steps if s.HasField("tool_execution"))
    assert [r.content.text for r in execution.tool_responses] == [
        "error: no station in Oslo", "error: no client tool named 'get_time'"]


async def test_a_failed_turn_raises_with_the_turn_and_its_reason(target, fake):
    fake.script(Reply(error_status=400, error_message="bad request"))
    async with AsyncClient(target) as client:
        agent_id, session_id = await new_session(client)
        with pytest.raises(TurnFailedError) as failed:
            await client.run_turn(agent_id, session_id, "hi")
    assert failed.value.turn.status == t.TURN_STATUS_FAILED
    # The model's refusal as the turn's error: a 400 from the model is the request's fault.
    assert (failed.value.code.name, failed.value.reason) == ("INVALID_ARGUMENT", "MODEL_REJECTED_REQUEST")
    assert "bad request" in failed.value.message


async def test_the_client_takes_answers_past_grpcs_default_4_mib(target, fake):
    """A turn's last event carries its input and its answer: a 2.5 MB message answered in
    kind makes it 7.5 MB, past the 4 MiB a gRPC channel receives by default."""
    text = "z" * 2_500_000
    fake.script(Reply(text=text, chunk_size=len(text)))
    async with AsyncClient(target) as client:
        agent_id, session_id = await new_session(client)
        turn = await client.run_turn(agent_id, session_id, text)
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.output_message.content.text == text


async def test_streams_remember_where_they_are_and_re_attach_from_there(target, fake):
    # background: the turn outlives the stream that started it (else leaving it cancels the turn)
    fake.script(Reply(text="one two three four", chunk_size=4))
    async with AsyncClient(target) as client:
        agent_id, session_id = await new_session(client)
        stream = client.agents.StreamTurn(pb.StreamTurnRequest(
            agent_id=agent_id, session_id=session_id, messages=[]), timeout=30)
        with pytest.raises(InvalidArgumentError):  # a turn needs messages
            await anext(stream)
        async with client.agents.StreamTurn(pb.StreamTurnRequest(
                agent_id=agent_id, session_id=session_id,
                messages=turns.input_messages("hi"), background=True), request_id="req-stream") as stream:
            first = [await anext(stream) for _ in range(3)]
            # the id the call went out with, as agentd's initial metadata echoes it
            assert stream.last_sequence_number == 2 and await stream.request_id() == "req-stream"
        rest = [e async for e in client.agents.StreamTurnEvents(pb.StreamTurnEventsRequest(
            agent_id=agent_id, session_id=session_id, turn_id=first[0].turn_id, starting_after=2))]
    numbers = [e.sequence_number for e in first + rest]
    assert numbers == list(range(len(numbers)))
    assert rest[-1].payload.HasField("turn_complete")


async def test_every_served_service_has_a_sync_and_an_async_service_class(target):
    services = {s.name for s in SERVICES}
    async with AsyncClient(target) as client:
        assert {type(v).__name__ for v in vars(client).values()} >= {f"Async{s}" for s in services}
        listed = await client.shields.ListShields(shields_pb2.ListShieldsRequest())
        assert list(listed.data) == []  # the test server declares no shields
    with Client(target) as client:
        assert {type(v).__name__ for v in vars(client).values()} >= services


async def test_a_response_streams_through_the_client(target, fake):
    fake.script(Reply(text="Hello from the model"))
    request = responses_pb2.StreamResponseRequest(model="test-model")
    request.input.text = "hi"
    async with AsyncClient(target) as client:
        events = [e async for e in client.responses.StreamResponse(request, timeout=30)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "created" and kinds[-1] == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].completed.response
    assert completed.output[0].message.content.parts.parts[0].output_text.text == "Hello from the model"


class CuttableProxy:
    """A TCP proxy to agentd whose open connections can be cut, as a dropped network does."""

    def __init__(self, target: str):
        self._host, port = target.rsplit(":", 1)
        self._port = int(port)
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.cut()
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        self._writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


async def test_run_turn_re_attaches_a_dropped_stream_and_misses_no_event(target, fake):
    fake.script(Reply(text="one two three four five six", chunk_size=2, chunk_delay=0.05))
    async with AsyncClient(target) as client:
        agent_id, session_id = await new_session(client)
    events, proxy = [], CuttableProxy(target)

    def on_event(event) -> None:
        events.append(event)
        if len(events) == 3:  # the turn has begun: drop the connection under the stream
            proxy.cut()

    async with proxy as proxied, AsyncClient(proxied) as client:
        turn = await client.run_turn(agent_id, session_id, "count", on_event=on_event, background=True,
                                     timeout=30)
    assert proxy.connections == 2  # the first stream's, then the re-attached one's
    assert turn.status == t.TURN_STATUS_COMPLETED
    assert turn.output_message.content.text == "one two three four five six"
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(numbers)))  # re-attached after the last event seen: no gap, no repeat
