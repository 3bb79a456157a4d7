"""Running turns over gRPC (and REST for the SSE shape) against a real agentd on SQLite and
PostgreSQL, with the scripted fake model server as the only fake."""

from __future__ import annotations

import asyncio
import base64
import json
import math

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import create_async_engine

from agentd.app import Agentd
from agentd.context import LOCAL_PRINCIPAL
from agentd.database_url import normalize_url
from agentd.engine import runs as runs_module
from agentd.engine.turns import engine as turn_engine_module
from agentd.errors import Unavailable, details_of, status_of
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc
from agentd.v1 import turn_events_pb2 as te
from tests.conftest import (
    database_refusing_connections,
    draining,
    error_of,
    fake_model_providers,
    make_settings,
    once_ended,
    running,
    running_with_agents,
)
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.fakes.search_server import FakeSearchServer, Hit, SearchReply


@pytest.fixture
def search():
    with FakeSearchServer() as server:
        yield server



@pytest_asyncio.fixture
async def server(database_url, tmp_path, fake):
    async with running(make_settings(database_url, tmp_path, providers=fake_model_providers(fake))) as agentd:
        yield agentd


@pytest_asyncio.fixture
async def agents(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield agents_pb2_grpc.AgentsServiceStub(channel)


@pytest_asyncio.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as client:
        yield client


def user(text: str) -> m.TurnInputMessage:
    return m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(text=text)))


def tool_def(name: str) -> t.AgentToolDef:
    schema = json_format.ParseDict(
        {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}},
        t.AgentToolDef().input_schema
    )
    return t.AgentToolDef(name=name, description=f"the {name} tool", input_schema=schema)


async def new_session(agents, **config) -> tuple[str, str]:
    cfg = t.AgentConfig(
        model=config.pop("model", "test-model"),
        instructions=config.pop("instructions", "Be brief."),
        **config,
    )
    agent = await agents.CreateAgent(pb.CreateAgentRequest(agent_config=cfg))
    session = await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent.agent_id, session_name="s"))
    return agent.agent_id, session.session_id


async def collect(call) -> list[te.TurnEvent]:
    return [r.event async for r in call]


def kinds(events) -> list[str]:
    out = []
    for e in events:
        kind = e.payload.WhichOneof("payload")
        body = getattr(e.payload, kind)
        if kind in ("step_start", "step_progress", "step_complete"):
            step = t.AgentStepType.Name(body.step_type).removeprefix("AGENT_STEP_TYPE_").lower()
            kind = f"{kind}:{step}"
            if kind.startswith("step_progress"):
                kind += ":" + body.delta.WhichOneof("delta")
        out.append(kind)
    return out


def stream_turn(agents, agent_id, session_id, *messages, **fields):
    return agents.StreamTurn(
        pb.StreamTurnRequest(
            agent_id=agent_id, session_id=session_id, messages=list(messages) or [user("hi")], **fields
        )
    )


def terminal_turn(events) -> t.Turn:
    payload = events[-1].payload
    return getattr(payload, payload.WhichOneof("payload")).turn


# ---------------------------------------------------------------------------- text turns


async def test_a_text_turn_streams_in_order_and_is_stored(agents, fake):
    # The model's six chunks arrive in one read: one text delta carries them.
    fake.script(Reply(text="Hello there, friend", chunk_size=6, burst=True))
    agent_id, session_id = await new_session(agents)
    events = await collect(stream_turn(agents, agent_id, session_id, user("hi")))
    assert kinds(events) == [
        "turn_start", "step_start:inference", "step_progress:inference:text", "step_complete:inference",
        "turn_complete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    turn_id = events[0].payload.turn_start.turn_id
    assert all(e.turn_id == turn_id for e in events)
    assert events[2].payload.step_progress.delta.text.text == "Hello there, friend"
    step = events[-2].payload.step_complete
    assert step.step_id.startswith("step_") and step.step_id == events[1].payload.step_start.step_id
    inference = step.step_details.inference
    assert inference.model_response.content.text == "Hello there, friend"
    assert inference.model_response.stop_reason == m.STOP_REASON_END_OF_TURN
    assert inference.model == "test-model" and inference.usage.total_tokens > 0
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.stop_reason == t.TURN_STOP_REASON_END_OF_TURN
    assert turn.output_message.content.text == "Hello there, friend"
    assert turn.completed_at.seconds > 0 and len(turn.steps) == 1
    stored = (
        await agents.GetTurn(pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id))
    ).turn
    assert stored == turn
    got = await agents.GetStep(
        pb.GetStepRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id, step_id=step.step_id)
    )
    assert got.step == step.step_details
    sent = fake.chat_requests[0].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert sent["temperature"] == 0 and "max_tokens" not in sent and "tools" not in sent


async def test_text_the_model_sends_apart_streams_apart(agents, fake):
    fake.script(Reply(text="Hello there, friend", chunk_size=6, chunk_delay=0.05))
    agent_id, session_id = await new_session(agents)
    events = await collect(stream_turn(agents, agent_id, session_id, user("hi")))
    texts = [e.payload.step_progress.delta.text.text for e in events if e.payload.HasField("step_progress")]
    assert len(texts) > 1 and "".join(texts) == "Hello there, friend"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert terminal_turn(events).output_message.content.text == "Hello there, friend"


async def test_create_turn_returns_the_same_turn_as_the_stream(agents, fake):
    fake.script(Reply(text="Unary answer"))
    agent_id, session_id = await new_session(agents)
    turn = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("hi")])
        )
    ).turn
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.output_message.content.text == "Unary answer"
    stored = (
        await agents.GetTurn(
            pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn.turn_id)
        )
    ).turn
    assert stored == turn
    replay = await collect(
        agents.StreamTurnEvents(
            pb.StreamTurnEventsRequest(agent_id=agent_id, session_id=session_id, turn_id=turn.turn_id)
        )
    )
    assert terminal_turn(replay) == turn and replay[0].sequence_number == 0


async def test_the_second_turn_sees_the_first_and_instructions_can_be_overridden(agents, fake):
    fake.script(Reply(text="first answer"), Reply(text="second answer"))
    agent_id, session_id = await new_session(agents)
    await agents.CreateTurn(
        pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("one")])
    )
    await agents.CreateTurn(
        pb.CreateTurnRequest(
            agent_id=agent_id, session_id=session_id, messages=[user("two")], instructions="Be verbose."
        )
    )
    assert fake.chat_requests[1].body["messages"] == [
        {"role": "system", "content": "Be verbose."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "two"},
    ]


async def test_later_turns_see_every_earlier_one_and_a_gone_session_or_agent_is_not_found(agents, fake):
    fake.script(*(Reply(text=f"answer {i}") for i in range(3)))
    agent_id, session_id = await new_session(agents)
    for i in range(3):
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user(f"q {i}")])
        )
    assert fake.chat_requests[2].body["messages"][1:] == [
        {"role": "user", "content": "q 0"},
        {"role": "assistant", "content": "answer 0"},
        {"role": "user", "content": "q 1"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "q 2"},
    ]
    # The agent is known to the engine now; its sessions are still checked on every start.
    _, other_session = await new_session(agents)
    for agent, session, reason in ((agent_id, other_session, "SESSION_NOT_FOUND"),
                                   (agent_id, "sess_nope", "SESSION_NOT_FOUND")):
        request = pb.CreateTurnRequest(agent_id=agent, session_id=session, messages=[user("x")])
        assert (await error_of(agents.CreateTurn(request)))[:2] == (grpc.StatusCode.NOT_FOUND, reason)
    await agents.DeleteSession(pb.DeleteSessionRequest(agent_id=agent_id, session_id=session_id))
    request = pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
    not_found = grpc.StatusCode.NOT_FOUND
    assert (await error_of(agents.CreateTurn(request)))[:2] == (not_found, "SESSION_NOT_FOUND")
    await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id))
    assert (await error_of(agents.CreateTurn(request)))[:2] == (not_found, "AGENT_NOT_FOUND")
    assert len(fake.chat_requests) == 3


async def test_sampling_response_format_and_per_turn_tool_choice_reach_the_model(agents, fake):
    schema = {"title": "Answer", "type": "object", "properties": {"a": {"type": "string", "maxLength": 20}}}
    fmt = t.AgentResponseFormat(
        json_schema=t.AgentJsonSchemaFormat(
            json_schema=json_format.ParseDict(schema, t.AgentJsonSchemaFormat().json_schema)
        )
    )
    agent_id, session_id = await new_session(
        agents,
        response_format=fmt,
        client_tools=[tool_def("weather")],
        sampling_params=t.SamplingParams(
            strategy=t.SamplingStrategy(greedy=t.GreedySamplingStrategy()), max_tokens=0
        ),
    )
    fake.script(Reply(text='{"a": "b"}'))
    await agents.CreateTurn(
        pb.CreateTurnRequest(
            agent_id=agent_id,
            session_id=session_id,
            messages=[user("x")],
            tool_config=t.AgentToolConfig(tool_choice="none"),
        )
    )
    sent = fake.chat_requests[0].body
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": schema},
    }
    assert sent["temperature"] == 0 and "max_tokens" not in sent
    assert sent["tool_choice"] == "none" and sent["tools"][0]["function"]["name"] == "weather"
    # Schemas go as the client wrote them: 20, not the 20.0 a protobuf Struct holds.
    assert repr(sent["response_format"]["json_schema"]["schema"]["properties"]["a"]["maxLength"]) == "20"
    assert repr(sent["tools"][0]["function"]["parameters"]["properties"]["city"]["maxLength"]) == "20"


async def test_a_number_json_cannot_carry_fails_the_turn_as_invalid_not_as_the_models_fault(agents, fake):
    """A gRPC client can put infinity in a Struct (here a tool's schema); the model request
    cannot carry it, which is the request's fault, not an unavailable model's."""
    tool = tool_def("weather")
    tool.input_schema["properties"]["city"]["maxLength"] = math.inf
    agent_id, session_id = await new_session(agents, client_tools=[tool])
    turn = (await agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[user("x")]))).turn
    assert turn.status == t.TURN_STATUS_FAILED
    assert turn.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "cannot be sent as JSON" in turn.error.message and not fake.chat_requests


async def test_a_tool_choice_names_one_of_the_turns_tools(agents, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Rome"}, id="c1")]))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    session = {"agent_id": agent_id, "session_id": session_id}
    await agents.CreateTurn(pb.CreateTurnRequest(
        **session, messages=[user("x")], tool_config=t.AgentToolConfig(tool_choice="weather")))
    assert fake.chat_requests[0].body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    other_agent, other_session = await new_session(agents)  # (the paused turn holds the session)
    assert await error_of(agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=other_agent, session_id=other_session, messages=[user("x")],
        tool_config=t.AgentToolConfig(tool_choice="weather")))) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["tool_config.tool_choice"])
    assert len(fake.chat_requests) == 1


async def test_answers_larger_than_the_largest_request_are_sent_whole(database_url, tmp_path, fake):
    """A turn's last event carries its input and its answer, a session all its turns: both
    outgrow the request bound (max_message_bytes), which used to bound what agentd sent, so
    such a turn, stored as completed, could never be read over gRPC again."""
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake),
                             max_message_bytes=64 * 1024)
    async with running_with_agents(settings) as (_, agents):
        agent_id, session_id = await new_session(agents)
        text = "x" * (40 * 1024)
        fake.script(Reply(text=text, chunk_size=len(text)), Reply(text=text, chunk_size=len(text)))
        events = await collect(stream_turn(agents, agent_id, session_id, user(text)))
        done = terminal_turn(events)
        assert done.status == t.TURN_STATUS_COMPLETED and events[-1].ByteSize() > 64 * 1024
        await agents.CreateTurn(pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id,
                                                     messages=[user(text)]))
        session = (await agents.GetSession(pb.GetSessionRequest(agent_id=agent_id,
                                                                session_id=session_id))).session
        assert len(session.turns) == 2 and session.ByteSize() > 4 * 40 * 1024
        turn = (await agents.GetTurn(pb.GetTurnRequest(agent_id=agent_id, session_id=session_id,
                                                       turn_id=done.turn_id))).turn
        assert turn.output_message.content.text == text
        # What a client sends is still bounded.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agents.CreateTurn(pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id,
                                                         messages=[user("y" * (65 * 1024))]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------------------- client tools


async def test_a_tool_call_streams_its_name_then_its_arguments_as_they_come(agents, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Paris"}, id="c1")], chunk_size=5,
                      chunk_delay=0.05))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    events = await collect(stream_turn(agents, agent_id, session_id, user("weather?")))
    calls = [e.payload.step_progress.delta.tool_call for e in events
             if e.payload.HasField("step_progress") and e.payload.step_progress.delta.HasField("tool_call")]
    texts = [c.tool_call.text for c in calls if c.parse_status == te.TOOL_CALL_PARSE_STATUS_IN_PROGRESS]
    assert texts[0].startswith("weather(") and len(texts) > 2
    assert "".join(texts) == 'weather({"city":"Paris"})'


async def test_two_client_tools_pause_then_resume_completes_the_same_turn(agents, fake):
    fake.script(
        Reply(
            tool_calls=[
                ToolCallSpec("weather", {"city": "Paris"}, id="c1"),
                ToolCallSpec("clock", "{}", id="c2"),
            ],
            burst=True,  # each call's name and arguments come in one piece
        ),
        Reply(text="Sunny at noon"),
    )
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather"), tool_def("clock")])
    events = await collect(stream_turn(agents, agent_id, session_id, user("weather?")))
    assert events[-1].payload.HasField("turn_awaiting_input")
    paused = terminal_turn(events)
    assert paused.status == t.TURN_STATUS_AWAITING_INPUT and not paused.HasField("completed_at")
    assert paused.stop_reason == t.TURN_STOP_REASON_CLIENT_TOOL_CALLS
    assert [c.call_id for c in paused.output_message.tool_calls] == ["c1", "c2"]
    deltas = [
        e.payload.step_progress.delta.tool_call
        for e in events
        if e.payload.HasField("step_progress") and e.payload.step_progress.delta.HasField("tool_call")
    ]
    assert (
        deltas[0].tool_call.text == 'weather({"city":"Paris"}'
        and deltas[0].parse_status == te.TOOL_CALL_PARSE_STATUS_IN_PROGRESS
    )
    succeeded = [d.tool_call.call for d in deltas if d.parse_status == te.TOOL_CALL_PARSE_STATUS_SUCCEEDED]
    assert [(c.call_id, c.tool_name, json.loads(c.arguments)) for c in succeeded] == [
        ("c1", "weather", {"city": "Paris"}),
        ("c2", "clock", {}),
    ]
    turn_id = paused.turn_id
    responses = [
        m.AgentToolResponse(call_id="c2", tool_name="clock", content=m.InterleavedContent(text="noon")),
        m.AgentToolResponse(call_id="c1", tool_name="weather", content=m.InterleavedContent(text="sunny")),
    ]
    resumed = await collect(
        agents.StreamResumeTurn(
            pb.StreamResumeTurnRequest(
                agent_id=agent_id, session_id=session_id, turn_id=turn_id, tool_responses=responses
            )
        )
    )
    assert kinds(resumed)[0] == "step_complete:tool_execution"  # with no step_start, as in Llama Stack
    assert kinds(resumed)[-1] == "turn_complete"
    assert [e.sequence_number for e in resumed] == list(range(len(events), len(events) + len(resumed)))
    assert all(e.turn_id == turn_id for e in resumed)
    turn = terminal_turn(resumed)
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.output_message.content.text == "Sunny at noon"
    step_ids = [getattr(s, s.WhichOneof("step")).step_id for s in turn.steps]
    assert len(set(step_ids)) == 3
    tool_step = turn.steps[1].tool_execution
    assert [c.call_id for c in tool_step.tool_calls] == ["c1", "c2"]
    assert [r.content.text for r in tool_step.tool_responses] == ["sunny", "noon"]
    sent = fake.chat_requests[1].body["messages"]
    assert [msg["role"] for msg in sent] == ["system", "user", "assistant", "tool", "tool"]
    assert sent[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    # The whole turn replays in one numbering.
    replay = await collect(
        agents.StreamTurnEvents(
            pb.StreamTurnEventsRequest(
                agent_id=agent_id, session_id=session_id, turn_id=turn_id, starting_after=len(events) - 1
            )
        )
    )
    assert [e.sequence_number for e in replay] == [e.sequence_number for e in resumed]


IMAGE = m.InterleavedContentItem(image=m.ImageContentItem(image=m.AgentImage(url=m.AgentURL(uri="https://x/y.png"))))
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(40))).decode()


def image_item(**image) -> m.InterleavedContentItem:
    return m.InterleavedContentItem(image=m.ImageContentItem(image=m.AgentImage(**image)))


def text_item(text: str) -> m.InterleavedContentItem:
    return m.InterleavedContentItem(text=m.TextContentItem(text=text))


def user_items(*items: m.InterleavedContentItem) -> m.TurnInputMessage:
    return m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(
        items=m.InterleavedContentItemList(items=items))))


@pytest.mark.parametrize("message, field", [
    (m.TurnInputMessage(), "messages[1].role"),
    (m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent())), "messages[1].content"),
    (m.TurnInputMessage(tool=m.ToolResponseMessage(call_id="c", content=m.InterleavedContent())),
     "messages[1].content"),
    # An item with no member, which REST would show as {} and no JSON reader take back.
    (m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(item=m.InterleavedContentItem()))),
     "messages[1].content.item.type"),
    (user_items(text_item("hi"), m.InterleavedContentItem()), "messages[1].content.items[1].type"),
    # A tool's result is sent to the model as text: an image there is refused, not dropped.
    (m.TurnInputMessage(tool=m.ToolResponseMessage(call_id="c", content=m.InterleavedContent(item=IMAGE))),
     "messages[1].content.item"),
    # Images a model's server could not read.
    (user_items(text_item("what is this?"), image_item()), "messages[1].content.items[1].image.image"),
    (user_items(image_item(url=m.AgentURL(uri="https://x/y.png"), data=PNG)),
     "messages[1].content.items[0].image.image"),
    (user_items(image_item(url=m.AgentURL(uri="ftp://x/y.png"))),
     "messages[1].content.items[0].image.image.url.uri"),
    (user_items(image_item(url=m.AgentURL(uri="data:text/plain;base64,aGk="))),
     "messages[1].content.items[0].image.image.url.uri"),
    (user_items(image_item(url=m.AgentURL(uri="data:image/png;base64,%%%"))),
     "messages[1].content.items[0].image.image.url.uri"),
    (user_items(image_item(data="not base64!")), "messages[1].content.items[0].image.image.data"),
    (user_items(image_item(url=m.AgentURL(uri="data:image/png;base64," + base64.b64encode(b"hi").decode()))),
     "messages[1].content.items[0].image.image.url.uri"),
    (user_items(image_item(data=base64.b64encode(b"plain text, not an image").decode())),
     "messages[1].content.items[0].image.image.data"),
])
async def test_an_empty_message_or_a_bad_image_is_invalid_and_starts_nothing(agents, fake, message, field):
    # Over REST the codec needs a role and content; a gRPC client can leave them empty.
    agent_id, session_id = await new_session(agents)
    code, reason, fields = await error_of(agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[user("hi"), message])))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", [field])
    get = pb.GetSessionRequest(agent_id=agent_id, session_id=session_id)
    assert not (await agents.GetSession(get)).session.turns and not fake.chat_requests


async def test_images_reach_the_model_as_image_url_parts_and_stay_in_the_history(server, agents, fake):
    agent_id, session_id = await new_session(agents)
    wrapped = "\n".join([PNG[:20], PNG[20:].rstrip("=")])  # as some clients write base64
    asked = user_items(text_item("what is on "), image_item(url=m.AgentURL(uri="https://x/y.png")),
                       text_item(" and "), image_item(data=wrapped))
    first = (await agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[asked]))).turn
    assert first.status == t.TURN_STATUS_COMPLETED
    asked.user.content.items.items[3].image.image.data = PNG
    assert list(first.input_messages) == [asked]  # kept as given, the data in standard base64
    sent = fake.chat_requests[0].body["messages"][-1]
    assert sent == {"role": "user", "content": [
        {"type": "text", "text": "what is on "},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "text", "text": " and "},
        # Inline data goes as a data: URL, its media type read from the image's bytes.
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}]}
    # One image alone is a list of one part; the first turn's images go again with the history,
    # rebuilt from the stored turn (not the engine's cache).
    assert server.turns._histories.pop((LOCAL_PRINCIPAL, session_id)) is not None
    await agents.CreateTurn(pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[
        m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(item=IMAGE)))]))
    again = fake.chat_requests[1].body["messages"]
    assert again[1] == sent
    assert again[-1] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}


async def test_a_document_added_to_a_message_of_one_image_follows_the_image(agents, fake):
    agent_id, session_id = await new_session(agents)
    await agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id,
        messages=[m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(item=IMAGE)))],
        documents=[m.AgentDocument(content=m.AgentDocumentContent(text="a caption"),
                                   mime_type="text/plain")]))
    assert fake.chat_requests[0].body["messages"][-1]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "text", "text": "\na caption"}]


async def test_every_resume_error(agents, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c1")]), Reply(text="done"))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    paused = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
        )
    ).turn
    other_agent, other_session = await new_session(agents)

    def resume(turn_id=paused.turn_id, session=session_id, agent=agent_id, calls=("c1",), name="weather"):
        return agents.ResumeTurn(
            pb.ResumeTurnRequest(
                agent_id=agent,
                session_id=session,
                turn_id=turn_id,
                tool_responses=[
                    m.AgentToolResponse(
                        call_id=c, tool_name=name, content=m.InterleavedContent(text="rain")
                    )
                    for c in calls
                ],
            )
        )

    assert await error_of(resume(turn_id="turn_nope")) == (grpc.StatusCode.NOT_FOUND, "TURN_NOT_FOUND", [])
    assert (await error_of(resume(agent=other_agent, session=other_session)))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "TURN_NOT_FOUND",
    )
    for calls in [("c2",), ("c1", "c1"), ("c1", "c2")]:
        code, reason, _ = await error_of(resume(calls=calls))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TOOL_RESPONSES_MISMATCH"), calls
    assert await error_of(resume(name="clock")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "TOOL_RESPONSES_MISMATCH", ["tool_responses[0].tool_name"])
    image = agents.ResumeTurn(pb.ResumeTurnRequest(
        agent_id=agent_id, session_id=session_id, turn_id=paused.turn_id, tool_responses=[m.AgentToolResponse(
            call_id="c1", tool_name="weather", content=m.InterleavedContent(item=IMAGE))]))
    assert await error_of(image) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["tool_responses[0].content.item"])
    # Another turn of the session cannot start while this one waits.
    assert (
        await error_of(
            agents.CreateTurn(
                pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("y")])
            )
        )
    )[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_BUSY")
    turn = (await resume()).turn
    assert turn.status == t.TURN_STATUS_COMPLETED
    assert (await error_of(resume()))[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "TURN_NOT_AWAITING_INPUT")


@pytest.mark.parametrize("max_infer_iters", [1, 0])  # 0 runs one inference, as in Llama Stack
async def test_max_infer_iters_stops_with_the_calls_unexecuted(agents, fake, max_infer_iters):
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Rome"}, id="c1")]))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")],
                                             max_infer_iters=max_infer_iters)
    agent = (await agents.GetAgent(pb.GetAgentRequest(agent_id=agent_id))).agent
    assert agent.agent_config.max_infer_iters == max_infer_iters  # as the client gave it
    turn = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
        )
    ).turn
    assert turn.status == t.TURN_STATUS_COMPLETED
    assert turn.stop_reason == t.TURN_STOP_REASON_MAX_INFER_ITERS
    assert [c.call_id for c in turn.output_message.tool_calls] == ["c1"]
    assert [s.WhichOneof("step") for s in turn.steps] == ["inference"]
    # The next turn's history leaves the unanswered call out.
    fake.script(Reply(text="ok"))
    await agents.CreateTurn(
        pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("y")])
    )
    assert [msg["role"] for msg in fake.chat_requests[1].body["messages"]] == ["system", "user", "user"]


def tool_answer(call_id: str, text: str) -> m.TurnInputMessage:
    content = m.InterleavedContent(text=text)
    return m.TurnInputMessage(tool=m.ToolResponseMessage(call_id=call_id, content=content))


def roles(request) -> list[str]:
    return [message["role"] for message in request.body["messages"]]


async def test_the_next_turn_may_answer_the_calls_a_turn_left_at_max_infer_iters(agents, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Rome"}, id="c1")]), Reply(text="so"))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")], max_infer_iters=1)
    session = {"agent_id": agent_id, "session_id": session_id}
    await agents.CreateTurn(pb.CreateTurnRequest(**session, messages=[user("x")]))
    turn = (await agents.CreateTurn(pb.CreateTurnRequest(
        **session, messages=[tool_answer("c1", "sunny"), user("so?")]))).turn
    assert turn.status == t.TURN_STATUS_COMPLETED
    sent = fake.chat_requests[1].body["messages"]
    assert roles(fake.chat_requests[1]) == ["system", "user", "assistant", "tool", "user"]
    assert [c["id"] for c in sent[2]["tool_calls"]] == ["c1"] and sent[3]["tool_call_id"] == "c1"


async def test_a_tool_message_that_answers_no_call_fails_its_turn_and_nothing_after_it(agents, fake):
    """It would make the model refuse the conversation: the turn fails INVALID_ARGUMENT without
    calling the model, and, as any turn that did not complete, gives later turns nothing."""
    fake.script(Reply(text="fine"))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    session = {"agent_id": agent_id, "session_id": session_id}
    failed = (await agents.CreateTurn(pb.CreateTurnRequest(
        **session, messages=[user("hi"), tool_answer("nope", "sunny")]))).turn
    assert failed.status == t.TURN_STATUS_FAILED
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "messages[1]" in failed.error.message and "'nope'" in failed.error.message
    assert fake.chat_requests == []
    after = (await agents.CreateTurn(pb.CreateTurnRequest(**session, messages=[user("again")]))).turn
    assert after.status == t.TURN_STATUS_COMPLETED
    assert roles(fake.chat_requests[0]) == ["system", "user"]


async def test_a_turn_that_did_not_complete_gives_later_turns_nothing(agents, fake):
    """As in Llama Stack, which keeps only turns that complete: a failed turn's input (which
    may be what the model refused) is not sent again, nor a cancelled or interrupted one's."""
    fake.script(Reply(error_status=400, error_message="bad input"), Reply(text="ok"), Reply(text="ok again"))
    agent_id, session_id = await new_session(agents)
    session = {"agent_id": agent_id, "session_id": session_id}
    failed = (await agents.CreateTurn(pb.CreateTurnRequest(**session, messages=[user("poison")]))).turn
    assert failed.status == t.TURN_STATUS_FAILED
    for text in ("second", "third"):
        assert (await agents.CreateTurn(pb.CreateTurnRequest(
            **session, messages=[user(text)]))).turn.status == t.TURN_STATUS_COMPLETED
    contents = [[m["content"] for m in request.body["messages"]] for request in fake.chat_requests[1:]]
    assert contents == [["Be brief.", "second"], ["Be brief.", "second", "ok", "third"]]


async def test_unknown_or_unavailable_toolgroups_fail_before_any_inference(agents, fake):
    agent_id, session_id = await new_session(agents)
    for group, expected in [
        ("nope::group", (grpc.StatusCode.NOT_FOUND, "TOOLGROUP_NOT_FOUND")),
        ("builtin::websearch", (grpc.StatusCode.FAILED_PRECONDITION, "TOOLGROUP_UNAVAILABLE")),  # no key
        ("", (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["toolgroups[0]"])),
    ]:
        request = pb.CreateTurnRequest(
            agent_id=agent_id,
            session_id=session_id,
            messages=[user("x")],
            toolgroups=[t.AgentToolGroup(name=group)],
        )
        assert (await error_of(agents.CreateTurn(request)))[:len(expected)] == expected
    assert fake.chat_requests == []


async def test_a_server_tool_call_runs_in_its_own_step(database_url, tmp_path, fake, search):
    settings = make_settings(
        database_url,
        tmp_path,
        providers=fake_model_providers(fake),
        websearch={"api_key": "sk-search", "base_url": search.base_url},
    )
    server = Agentd(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = agents_pb2_grpc.AgentsServiceStub(channel)
            fake.script(
                Reply(
                    tool_calls=[ToolCallSpec("web_search", {"query": "agentd", "max_results": 9}, id="s1")]
                ),
                Reply(text="Found it."),
            )
            args = t.AgentToolGroupWithArgs(name="builtin::websearch")
            args.args.update({"max_results": 1})
            agent_id, session_id = await new_session(stub, toolgroups=[t.AgentToolGroup(with_args=args)])
            events = await collect(stream_turn(stub, agent_id, session_id, user("search agentd")))
    finally:
        await server.stop(0)
    order = [k for k in kinds(events) if not k.startswith("step_progress:inference")]
    assert order == [
        "turn_start",
        "step_start:inference",
        "step_complete:inference",
        "step_start:tool_execution",
        "step_progress:tool_execution:tool_call",
        "step_complete:tool_execution",
        "step_start:inference",
        "step_complete:inference",
        "turn_complete",
    ]
    turn = terminal_turn(events)
    assert [s.WhichOneof("step") for s in turn.steps] == ["inference", "tool_execution", "inference"]
    execution = turn.steps[1].tool_execution
    assert [c.call_id for c in execution.tool_calls] == ["s1"]
    assert execution.tool_responses[0].tool_name == "web_search"
    assert search.requests[0].body["query"] == "agentd"
    assert search.requests[0].body["max_results"] == 1  # the group's args win over the model's
    assert fake.chat_requests[0].body["tools"][0]["function"]["name"] == "web_search"
    assert fake.chat_requests[1].body["messages"][-1]["tool_call_id"] == "s1"
    assert turn.output_message.content.text == "Found it."


async def test_a_group_named_again_is_taken_once_with_the_args_of_its_last_mention(
        database_url, tmp_path, fake, search):
    """As in Llama Stack: how a turn passes its own args to a group of its agent. A client tool
    of the same name as a server tool would hide it: INVALID_ARGUMENT."""
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake),
                             websearch={"api_key": "sk-search", "base_url": search.base_url})

    def group(max_results: int) -> t.AgentToolGroup:
        args = t.AgentToolGroupWithArgs(name="builtin::websearch")
        args.args.update({"max_results": max_results})
        return t.AgentToolGroup(with_args=args)
    fake.script(Reply(tool_calls=[ToolCallSpec("web_search", {"query": "q"}, id="s1")]), Reply(text="ok"))
    async with running(settings) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents = agents_pb2_grpc.AgentsServiceStub(channel)
        agent_id, session_id = await new_session(
            agents, toolgroups=[t.AgentToolGroup(name="builtin::websearch"), group(3)])
        turn = (await agents.CreateTurn(pb.CreateTurnRequest(
            agent_id=agent_id, session_id=session_id, messages=[user("search")], toolgroups=[group(1)]))).turn
        assert turn.status == t.TURN_STATUS_COMPLETED
        assert search.requests[0].body["max_results"] == 1
        assert [tool["function"]["name"] for tool in fake.chat_requests[0].body["tools"]] == ["web_search"]
        clashing, session = await new_session(agents, client_tools=[tool_def("web_search")])
        code, _, fields = await error_of(agents.CreateTurn(pb.CreateTurnRequest(
            agent_id=clashing, session_id=session, messages=[user("x")], toolgroups=[group(1)])))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["toolgroups"])
    assert len(fake.chat_requests) == 2


async def test_a_tool_that_does_not_answer_in_time_is_an_error_step_and_the_turn_goes_on(
    database_url, tmp_path, fake, search
):
    settings = make_settings(
        database_url,
        tmp_path,
        providers=fake_model_providers(fake),
        # The search's own HTTP timeout is far away: the tool deadline is what ends the call.
        websearch={"api_key": "sk-search", "base_url": search.base_url, "timeout_s": 300},
        tool_timeout_s=0.5,
    )
    search.script(SearchReply(results=[Hit("late", "https://late.example", "too late")], delay=60))
    fake.script(
        Reply(tool_calls=[ToolCallSpec("web_search", {"query": "slow"}, id="s1")]),
        Reply(text="The search timed out."),
    )
    server = Agentd(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = agents_pb2_grpc.AgentsServiceStub(channel)
            websearch = t.AgentToolGroup(name="builtin::websearch")
            agent_id, session_id = await new_session(stub, toolgroups=[websearch])
            events = await collect(stream_turn(stub, agent_id, session_id, user("search")))
    finally:
        await server.stop(0)
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED
    assert turn.output_message.content.text == "The search timed out."
    (response,) = turn.steps[1].tool_execution.tool_responses
    assert response.call_id == "s1" and response.error_message == "timed out after 0.5 s"
    assert response.content.text == "Tool 'web_search' did not answer within 0.5 s."
    told = fake.chat_requests[1].body["messages"][-1]
    assert told == {"role": "tool", "tool_call_id": "s1", "content": response.content.text}
    assert len(search.requests) == 1


async def test_unknown_model_agent_and_session(agents, fake):
    agent_id, session_id = await new_session(agents, model="nope")
    assert (
        await error_of(
            agents.CreateTurn(
                pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
            )
        )
    )[:2] == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert (
        await error_of(
            agents.CreateTurn(
                pb.CreateTurnRequest(agent_id=agent_id, session_id="sess_nope", messages=[user("x")])
            )
        )
    )[:2] == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    assert (
        await error_of(
            agents.CreateTurn(
                pb.CreateTurnRequest(agent_id="agent_nope", session_id=session_id, messages=[user("x")])
            )
        )
    )[:2] == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")


async def test_a_retried_create_with_the_same_request_id_returns_the_first_turn(agents, fake):
    fake.script(Reply(text="once"))
    agent_id, session_id = await new_session(agents)
    request = pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[user("x")], request_id="key-1"
    )
    first = (await agents.CreateTurn(request)).turn
    again = (await agents.CreateTurn(request)).turn
    assert again == first and len(fake.chat_requests) == 1


# ---------------------------------------------------------------------------- failures, cancel


async def test_model_outage_mid_stream_fails_the_turn(agents, fake):
    fake.script(Reply(text="partial answer that breaks", chunk_size=3, disconnect_after_chunks=3))
    agent_id, session_id = await new_session(agents)
    events = await collect(stream_turn(agents, agent_id, session_id))
    assert kinds(events)[0] == "turn_start" and kinds(events)[-1] == "turn_failed"
    failed = events[-1].payload.turn_failed
    assert failed.turn.status == t.TURN_STATUS_FAILED and failed.turn.stop_reason == t.TURN_STOP_REASON_ERROR
    assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    stored = (
        await agents.GetTurn(
            pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=failed.turn.turn_id)
        )
    ).turn
    assert stored.status == t.TURN_STATUS_FAILED and stored.error == failed.error
    assert stored.completed_at.seconds > 0
    # The session is free again.
    fake.script(Reply(text="back"))
    turn = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
        )
    ).turn
    assert turn.status == t.TURN_STATUS_COMPLETED


async def test_model_outage_over_rest_ends_with_an_sse_error(http, agents, fake):
    fake.script(Reply(text="partial answer that breaks", chunk_size=3, disconnect_after_chunks=3))
    agent_id, session_id = await new_session(agents)
    async with http.stream(
        "POST",
        f"/v1/agents/{agent_id}/session/{session_id}/turn",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:
        assert response.status_code == 200
        data = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    assert data[0]["event"]["payload"]["event_type"] == "turn_start"
    assert list(data[-1]) == ["error"] and "message" in data[-1]["error"]


@pytest.mark.parametrize("prefix", ["/v1alpha", "/v1"])
async def test_a_failed_unary_turn_over_rest_answers_its_error(http, agents, fake, prefix):
    # Over gRPC the failed turn is returned (with its error); over REST, where the turn has
    # no error field, the route answers with the error as the stream's last event says it.
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Paris"}, id="c1")]),
                Reply(error_status=503, error_message="overloaded"),
                Reply(error_status=503, error_message="overloaded again"))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    turns = f"{prefix}/agents/{agent_id}/session/{session_id}/turn"
    paused = await http.post(turns, json={"messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert paused.status_code == 200 and paused.json()["status"] == "awaiting_input"
    turn_id = paused.json()["turn_id"]
    resumed = await http.post(f"{turns}/{turn_id}/resume", json={"stream": False, "tool_responses": [
        {"call_id": "c1", "tool_name": "weather", "content": "sunny"}]})
    assert resumed.status_code == 503
    assert resumed.json() == {"detail": "Model 'test-model' is unavailable (HTTP 503): overloaded"}
    failed = await http.post(turns, json={"messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert failed.status_code == 503 and failed.json()["detail"].endswith("overloaded again")
    # The turns are kept as they ended, and the session takes a new one.
    get = pb.GetSessionRequest(agent_id=agent_id, session_id=session_id)
    stored = (await agents.GetSession(get)).session.turns
    assert [turn.status for turn in stored] == [t.TURN_STATUS_FAILED, t.TURN_STATUS_FAILED]
    assert stored[1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    fake.script(Reply(text="back"))
    again = await http.post(turns, json={"messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert again.status_code == 200 and again.json()["output_message"]["content"] == "back"


async def test_a_unary_turn_over_rest_stops_when_its_client_goes_away(http, agents, fake):
    fake.script(Reply(text="never", hang=True))
    agent_id, session_id = await new_session(agents)
    turns = f"/v1alpha/agents/{agent_id}/session/{session_id}/turn"
    with pytest.raises(httpx.ReadTimeout):
        await http.post(turns, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=0.5)
    get = pb.GetSessionRequest(agent_id=agent_id, session_id=session_id)
    for _ in range(100):  # as a dropped stream's turn: cancelled, not left running
        session = (await agents.GetSession(get)).session
        if session.turns and session.turns[0].status != t.TURN_STATUS_IN_PROGRESS:
            break
        await asyncio.sleep(0.05)
    assert [turn.status for turn in session.turns] == [t.TURN_STATUS_CANCELLED]
    fake.script(Reply(text="back"))
    again = await http.post(turns, json={"messages": [{"role": "user", "content": "hi"}]})
    assert again.status_code == 200 and again.json()["output_message"]["content"] == "back"


async def test_a_re_attach_before_minus_one_is_invalid_and_minus_one_replays_all(http, agents, fake):
    fake.script(Reply(text="Hi!"))
    agent_id, session_id = await new_session(agents)
    turn = (await agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[user("hi")]))).turn
    ids = {"agent_id": agent_id, "session_id": session_id, "turn_id": turn.turn_id}
    code, reason, fields = await error_of(collect(agents.StreamTurnEvents(
        pb.StreamTurnEventsRequest(**ids, starting_after=-2))))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["starting_after"])
    refused = await http.get(f"/v1alpha/agents/{agent_id}/session/{session_id}/turn/{turn.turn_id}/events",
                             headers={"Last-Event-ID": "-3"})
    assert refused.status_code == 400 and "-1 or more, got -3" in refused.text
    every = await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(**ids, starting_after=-1)))
    assert every == await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(**ids)))
    assert kinds(every)[0] == "turn_start" and kinds(every)[-1] == "turn_complete"


async def test_a_failed_unary_turn_over_grpc_is_returned_with_its_error(agents, fake):
    fake.script(Reply(error_status=503, error_message="overloaded"))
    agent_id, session_id = await new_session(agents)
    turn = (await agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[user("hi")]))).turn
    assert turn.status == t.TURN_STATUS_FAILED and turn.error.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_a_text_turn_over_rest_has_the_llama_stack_shape(http, agents, fake):
    fake.script(Reply(text="Hi!"))
    agent_id, session_id = await new_session(agents)
    async with http.stream(
        "POST",
        f"/v1/agents/{agent_id}/session/{session_id}/turn",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:
        data = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    types_ = [d["event"]["payload"]["event_type"] for d in data]
    assert types_ == ["turn_start", "step_start", "step_progress", "step_complete", "turn_complete"]
    assert data[1]["event"]["payload"]["metadata"] == {}  # as Llama Stack's, not null
    assert data[2]["event"]["payload"]["delta"] == {"type": "text", "text": "Hi!"}
    turn = data[-1]["event"]["payload"]["turn"]
    assert turn["output_message"]["content"] == "Hi!" and turn["output_message"]["role"] == "assistant"


async def test_a_cancelled_call_cancels_the_turn(agents, fake):
    fake.script(Reply(text="slow answer", chunk_size=1, chunk_delay=0.2))
    agent_id, session_id = await new_session(agents)
    call = stream_turn(agents, agent_id, session_id)
    seen = []
    async for response in call:
        seen.append(response.event)
        if response.event.payload.HasField("step_progress"):
            break
    call.cancel()
    turn_id = seen[0].payload.turn_start.turn_id
    for _ in range(100):
        turn = (
            await agents.GetTurn(pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id))
        ).turn
        if turn.status != t.TURN_STATUS_IN_PROGRESS:
            break
        await asyncio.sleep(0.05)
    assert turn.status == t.TURN_STATUS_CANCELLED
    replay = await collect(
        agents.StreamTurnEvents(
            pb.StreamTurnEventsRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id)
        )
    )
    assert replay[-1].payload.turn_failed.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert [e.sequence_number for e in replay] == list(range(len(replay)))


async def test_a_background_turn_survives_its_dropped_stream_and_can_be_followed(agents, fake):
    fake.script(Reply(text="a background answer", chunk_size=2, chunk_delay=0.05))
    agent_id, session_id = await new_session(agents)
    call = stream_turn(agents, agent_id, session_id, background=True)
    seen = []
    async for response in call:
        seen.append(response.event)
        if len(seen) == 4:
            break
    call.cancel()
    turn_id = seen[0].payload.turn_start.turn_id
    rest = await collect(
        agents.StreamTurnEvents(
            pb.StreamTurnEventsRequest(
                agent_id=agent_id,
                session_id=session_id,
                turn_id=turn_id,
                starting_after=seen[-1].sequence_number,
            )
        )
    )
    numbers = [e.sequence_number for e in seen + rest]
    assert numbers == list(range(len(numbers)))
    assert terminal_turn(rest).status == t.TURN_STATUS_COMPLETED
    assert terminal_turn(rest).output_message.content.text == "a background answer"


async def test_cancels_at_once_all_end_the_turn_cancelled(agents, fake):
    """A second cancel while the first one's end is being written waits for that end: it
    must not interrupt the write (which left the turn in_progress, its session busy)."""
    for _ in range(5):
        fake.script(Reply(text="never finished", hang=True))
        agent_id, session_id = await new_session(agents)
        call = stream_turn(agents, agent_id, session_id)
        first = None
        async for response in call:
            first = response.event
            break
        request = pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id,
                                       turn_id=first.payload.turn_start.turn_id)
        answers = await asyncio.gather(*(agents.CancelTurn(request) for _ in range(3)),
                                       return_exceptions=True)
        # Each is the cancelled turn, or (its end already stored when it looked) TURN_NOT_RUNNING.
        cancelled = [a for a in answers if not isinstance(a, BaseException)]
        assert cancelled and all(a.turn.status == t.TURN_STATUS_CANCELLED for a in cancelled)
        for refused in (a for a in answers if isinstance(a, BaseException)):
            assert (refused.code(), details_of(rpc_status.from_call(refused))[0]) == (
                grpc.StatusCode.FAILED_PRECONDITION, "TURN_NOT_RUNNING")
        stored = (await agents.GetTurn(pb.GetTurnRequest(agent_id=agent_id, session_id=session_id,
                                                         turn_id=request.turn_id))).turn
        assert stored.status == t.TURN_STATUS_CANCELLED
        call.cancel()
        fake.reset()
        fake.script(Reply(text="next"))
        after = (await agents.CreateTurn(pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id,
                                                              messages=[user("again")]))).turn
        assert after.status == t.TURN_STATUS_COMPLETED


async def test_a_resume_and_a_cancel_at_once_end_the_turn_one_way(agents, fake):
    """Either the cancel ends the paused turn and the resume is refused, or the resume runs
    and the cancel stops it: never an internal error, never both numbering the same events."""
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    for _ in range(5):
        fake.reset()
        fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c1")]),
                    Reply(text="after the tool", chunk_size=2, chunk_delay=0.02))
        paused = (await agents.CreateTurn(pb.CreateTurnRequest(
            agent_id=agent_id, session_id=session_id, messages=[user("x")]))).turn
        ids = {"agent_id": agent_id, "session_id": session_id, "turn_id": paused.turn_id}
        resume = agents.ResumeTurn(pb.ResumeTurnRequest(**ids, tool_responses=[m.AgentToolResponse(
            call_id="c1", tool_name="weather", content=m.InterleavedContent(text="sunny"))]))
        resumed, cancelled = await asyncio.gather(resume, agents.CancelTurn(pb.CancelTurnRequest(**ids)),
                                                  return_exceptions=True)
        if isinstance(resumed, BaseException):
            assert (resumed.code(), details_of(rpc_status.from_call(resumed))[0]) == (
                grpc.StatusCode.FAILED_PRECONDITION, "TURN_NOT_AWAITING_INPUT")
        assert not isinstance(cancelled, BaseException)
        stored = (await agents.GetTurn(pb.GetTurnRequest(**ids))).turn
        assert stored.status in (t.TURN_STATUS_CANCELLED, t.TURN_STATUS_COMPLETED)
        events = await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(**ids)))
        assert kinds(events)[-1] == "turn_awaiting_input"  # a stream ends at the first status event
        events += await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(
            **ids, starting_after=events[-1].sequence_number)))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert kinds(events).count("turn_failed") + kinds(events).count("turn_complete") == 1


async def test_a_cancel_whose_caller_left_holds_the_session_until_the_turn_has_ended(agents, fake,
                                                                                     database_url):
    """A CancelTurn whose client gives up while the turn's end is being written still ends the
    turn, and until it has, a resume is refused at once rather than continuing the turn."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL row lock holds the cancel's write; SQLite has no row locks")
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c1")]))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    paused = (await agents.CreateTurn(pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=[user("x")]))).turn
    ids = {"agent_id": agent_id, "session_id": session_id, "turn_id": paused.turn_id}
    holder = create_async_engine(normalize_url(database_url))
    try:
        async with holder.connect() as conn:
            await conn.exec_driver_sql("BEGIN")
            await conn.exec_driver_sql(f"SELECT 1 FROM turns WHERE id = '{paused.turn_id}' FOR UPDATE")
            with pytest.raises(grpc.aio.AioRpcError) as left:
                await agents.CancelTurn(pb.CancelTurnRequest(**ids), timeout=0.5)
            assert left.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            resume = agents.ResumeTurn(pb.ResumeTurnRequest(**ids, tool_responses=[m.AgentToolResponse(
                call_id="c1", tool_name="weather", content=m.InterleavedContent(text="sunny"))]), timeout=3)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await resume
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "being resumed or cancelled" in refused.value.details()
            await conn.exec_driver_sql("ROLLBACK")
    finally:
        await holder.dispose()

    async def read():
        return (await agents.GetTurn(pb.GetTurnRequest(**ids))).turn
    assert (await once_ended(read, t.TURN_STATUS_AWAITING_INPUT)).status == t.TURN_STATUS_CANCELLED
    events = await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(**ids)))
    events += await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(
        **ids, starting_after=events[-1].sequence_number)))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds(events)[-2:] == ["turn_awaiting_input", "turn_failed"]


async def test_cancelling_an_ended_turn_never_holds_up_the_sessions_next_turn(agents, fake):
    fake.script(Reply(text="done"), Reply(text="next"))
    agent_id, session_id = await new_session(agents)
    ended = (await agents.CreateTurn(pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id,
                                                          messages=[user("one")]))).turn
    request = pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=ended.turn_id)
    *refused, created = await asyncio.gather(
        *(agents.CancelTurn(request) for _ in range(5)),
        agents.CreateTurn(pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id,
                                               messages=[user("two")])),
        return_exceptions=True)
    assert not isinstance(created, BaseException) and created.turn.status == t.TURN_STATUS_COMPLETED
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.FAILED_PRECONDITION
               for r in refused)


async def test_cancel_turn_running_paused_and_ended(agents, fake):
    fake.script(Reply(text="never finished", hang=True))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    call = stream_turn(agents, agent_id, session_id, background=True)
    first = None
    async for response in call:
        first = response.event
        break
    turn_id = first.payload.turn_start.turn_id
    turn = (
        await agents.CancelTurn(
            pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id)
        )
    ).turn
    assert turn.status == t.TURN_STATUS_CANCELLED
    assert (
        await error_of(
            agents.CancelTurn(pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id))
        )
    )[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "TURN_NOT_RUNNING")
    call.cancel()
    # A paused turn is cancelled directly, with its turn_failed kept after its pause.
    fake.reset()
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c1")]))
    paused = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
        )
    ).turn
    turn = (
        await agents.CancelTurn(
            pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=paused.turn_id)
        )
    ).turn
    assert turn.status == t.TURN_STATUS_CANCELLED
    events = await collect(
        agents.StreamTurnEvents(
            pb.StreamTurnEventsRequest(agent_id=agent_id, session_id=session_id, turn_id=paused.turn_id)
        )
    )
    assert kinds(events)[-1] == "turn_awaiting_input"  # a stream ends at the first status event
    after = await collect(
        agents.StreamTurnEvents(
            pb.StreamTurnEventsRequest(
                agent_id=agent_id,
                session_id=session_id,
                turn_id=paused.turn_id,
                starting_after=events[-1].sequence_number,
            )
        )
    )
    assert kinds(after) == ["turn_failed"] and after[0].sequence_number == events[-1].sequence_number + 1
    assert after[0].payload.turn_failed.turn.status == t.TURN_STATUS_CANCELLED
    assert (
        await error_of(
            agents.CancelTurn(
                pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id="turn_nope")
            )
        )
    )[:2] == (grpc.StatusCode.NOT_FOUND, "TURN_NOT_FOUND")
    assert (
        await error_of(
            agents.StreamTurnEvents(
                pb.StreamTurnEventsRequest(agent_id=agent_id, session_id=session_id, turn_id="turn_nope")
            ).read()
        )
    )[:2] == (grpc.StatusCode.NOT_FOUND, "TURN_NOT_FOUND")


async def test_session_busy_while_a_turn_runs(agents, fake):
    fake.script(Reply(text="slow", hang=True))
    agent_id, session_id = await new_session(agents)
    call = stream_turn(agents, agent_id, session_id)
    async for _ in call:
        break
    assert (
        await error_of(
            agents.CreateTurn(
                pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("y")])
            )
        )
    )[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_BUSY")
    call.cancel()


# ---------------------------------------------------------------------------- shutdown, crash


async def test_shutdown_interrupts_a_running_turn_and_a_crash_is_recovered_at_start(
    database_url, tmp_path, fake
):
    settings = make_settings(
        database_url,
        tmp_path,
        providers=fake_model_providers(fake),
    )
    fake.script(Reply(text="never", hang=True))
    first = Agentd(settings)
    await first.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.grpc_port}") as channel:
        stub = agents_pb2_grpc.AgentsServiceStub(channel)
        agent_id, session_id = await new_session(stub)
        call = stream_turn(stub, agent_id, session_id, background=True)
        async for response in call:
            turn_id = response.event.payload.turn_start.turn_id
            break
        call.cancel()
    await first.stop(0)
    second = Agentd(settings)
    await second.start()
    try:
        owner = LOCAL_PRINCIPAL
        turn = await second.agent_store.get_turn(owner, session_id, turn_id)
        assert turn.status == t.TURN_STATUS_INTERRUPTED
        assert turn.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        # A turn a crash left in progress (no process ran it to its end) is interrupted at start.
        crashed = t.Turn(turn_id="turn_crashed", session_id=session_id, status=t.TURN_STATUS_IN_PROGRESS)
        crashed.started_at.FromMicroseconds(1)
        await second.agent_store.insert_turn(owner, crashed)
    finally:
        await second.stop(0)
    third = Agentd(settings)
    await third.start()
    try:
        turn = await third.agent_store.get_turn(owner, session_id, "turn_crashed")
        assert turn.status == t.TURN_STATUS_INTERRUPTED and turn.completed_at.seconds > 0
        assert await third.agent_store.turn_status(owner, session_id, "turn_crashed") == "interrupted"
    finally:
        await third.stop(0)


async def test_text_documents_are_inlined_into_the_last_message(agents, fake):
    fake.script(Reply(text="read it"))
    agent_id, session_id = await new_session(agents)
    document = m.AgentDocument(
        content=m.AgentDocumentContent(text="The sky is green."), mime_type="text/plain"
    )
    turn = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(
                agent_id=agent_id, session_id=session_id, messages=[user("Summarize:")], documents=[document]
            )
        )
    ).turn
    assert fake.chat_requests[0].body["messages"][-1] == {
        "role": "user",
        "content": "Summarize:\nThe sky is green.",
    }
    assert turn.input_messages[0].user.content.text == "Summarize:\nThe sky is green."
    bad = m.AgentDocument(content=m.AgentDocumentContent(text="x"), mime_type="application/pdf")
    code, _, fields = await error_of(
        agents.CreateTurn(
            pb.CreateTurnRequest(
                agent_id=agent_id, session_id=session_id, messages=[user("x")], documents=[bad]
            )
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[0].mime_type"])


async def test_a_tool_call_with_bad_json_arguments_is_reported_failed(agents, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", "{not json", id="c1")]))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    events = await collect(stream_turn(agents, agent_id, session_id))
    statuses = [
        e.payload.step_progress.delta.tool_call.parse_status
        for e in events
        if e.payload.HasField("step_progress") and e.payload.step_progress.delta.HasField("tool_call")
    ]
    assert statuses[-1] == te.TOOL_CALL_PARSE_STATUS_FAILED
    assert set(statuses[:-1]) == {te.TOOL_CALL_PARSE_STATUS_IN_PROGRESS}
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED and not turn.output_message.tool_calls
    assert turn.output_message.content.text == "weather({not json)"


# ---------------------------------------------------------------------------- resumes


async def test_a_resume_runs_with_the_turns_own_settings(agents, fake):
    fake.script(
        Reply(tool_calls=[ToolCallSpec("weather", {"city": "Rome"}, id="c1")]),
        Reply(text="Warm."),
    )
    agent_id, session_id = await new_session(
        agents, client_tools=[tool_def("weather"), tool_def("clock")],
        tool_config=t.AgentToolConfig(tool_choice="auto"),
    )
    paused = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(
                agent_id=agent_id,
                session_id=session_id,
                messages=[user("weather?")],
                instructions="Answer in one word.",
                tool_config=t.AgentToolConfig(tool_choice="required"),
            )
        )
    ).turn
    assert paused.status == t.TURN_STATUS_AWAITING_INPUT
    turn = (
        await agents.ResumeTurn(
            pb.ResumeTurnRequest(
                agent_id=agent_id,
                session_id=session_id,
                turn_id=paused.turn_id,
                tool_responses=[
                    m.AgentToolResponse(
                        call_id="c1", tool_name="weather", content=m.InterleavedContent(text="25C")
                    )
                ],
            )
        )
    ).turn
    assert turn.status == t.TURN_STATUS_COMPLETED
    for sent in (fake.chat_requests[0].body, fake.chat_requests[1].body):
        assert sent["messages"][0] == {"role": "system", "content": "Answer in one word."}
        assert sent["tool_choice"] == "required"


async def test_the_same_request_sent_at_once_three_times_gets_one_turn_and_one_resume(agents, fake):
    # A client that retried before its first call was answered: the tries that find the
    # first still starting wait for it and follow its turn, instead of SESSION_BUSY or
    # "is being resumed".
    fake.script(Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c1")]), Reply(text="Cold."))
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])
    create = pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")],
                                  request_id="create-1")
    paused = [r.turn for r in await asyncio.gather(*(agents.CreateTurn(create) for _ in range(3)))]
    assert paused[0].status == t.TURN_STATUS_AWAITING_INPUT and paused[1] == paused[0] == paused[2]
    answer = m.AgentToolResponse(call_id="c1", tool_name="weather", content=m.InterleavedContent(text="-5"))
    resume = pb.ResumeTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=paused[0].turn_id,
                                  request_id="resume-1", tool_responses=[answer])
    done = [r.turn for r in await asyncio.gather(*(agents.ResumeTurn(resume) for _ in range(3)))]
    assert done[0].status == t.TURN_STATUS_COMPLETED and done[1] == done[0] == done[2]
    assert len(fake.chat_requests) == 2
    # With a document, whose reading lets the first try begin in between.
    document = m.AgentDocument(mime_type="text/plain", content=m.AgentDocumentContent(
        url=m.AgentURL(uri="data:text/plain;base64,aW5saW5l")))
    create = pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("y")],
                                  documents=[document], request_id="create-2")
    turns = [r.turn for r in await asyncio.gather(*(agents.CreateTurn(create) for _ in range(3)))]
    assert turns[0].status == t.TURN_STATUS_COMPLETED and turns[1] == turns[0] == turns[2]
    assert len(fake.chat_requests) == 3


async def test_a_retried_resume_with_the_same_request_id_returns_the_same_continuation(agents, fake):
    fake.script(
        Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c1")]),
        Reply(text="Cold.", chunk_size=1),
        Reply(tool_calls=[ToolCallSpec("weather", {"city": "Oslo"}, id="c2")]),
        Reply(text="Still cold.", chunk_size=2),
    )
    agent_id, session_id = await new_session(agents, client_tools=[tool_def("weather")])

    async def paused_turn() -> t.Turn:
        return (
            await agents.CreateTurn(
                pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
            )
        ).turn

    def answers(call_id):
        text = m.InterleavedContent(text="-5")
        return [m.AgentToolResponse(call_id=call_id, tool_name="weather", content=text)]

    # Unary.
    paused = await paused_turn()
    request = pb.ResumeTurnRequest(
        agent_id=agent_id, session_id=session_id, turn_id=paused.turn_id,
        tool_responses=answers("c1"), request_id="resume-1",
    )
    first = (await agents.ResumeTurn(request)).turn
    again = (await agents.ResumeTurn(request)).turn
    assert first.status == t.TURN_STATUS_COMPLETED and again == first
    assert len(fake.chat_requests) == 2
    other = pb.ResumeTurnRequest()
    other.CopyFrom(request)
    other.request_id = "resume-2"
    assert (await error_of(agents.ResumeTurn(other)))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION, "TURN_NOT_AWAITING_INPUT")

    # Streaming: the retry re-attaches to the same events, numbered alike.
    paused = await paused_turn()
    stream_request = pb.StreamResumeTurnRequest(
        agent_id=agent_id, session_id=session_id, turn_id=paused.turn_id,
        tool_responses=answers("c2"), request_id="resume-1",
    )
    resumed = await collect(agents.StreamResumeTurn(stream_request))
    retried = await collect(agents.StreamResumeTurn(stream_request))
    assert kinds(resumed)[-1] == "turn_complete"
    assert [(e.sequence_number, kinds([e])) for e in retried] == [
        (e.sequence_number, kinds([e])) for e in resumed
    ]
    assert terminal_turn(retried).output_message.content.text == "Still cold."
    assert len(fake.chat_requests) == 4


# ---------------------------------------------------------------------------- deadlines


async def test_the_callers_deadline_reaches_the_model(agents, fake):
    fake.script(Reply(text="fine"), Reply(text="too late", delay=5))
    agent_id, session_id = await new_session(agents)
    turn = (
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")]), timeout=30
        )
    ).turn
    assert turn.status == t.TURN_STATUS_COMPLETED  # a deadline that leaves time changes nothing
    call = agents.StreamTurn(
        pb.StreamTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("y")]), timeout=1.0
    )
    # The model call ends just before the call's deadline: the turn fails with its own error.
    events = await collect(call)
    assert kinds(events)[-1] == "turn_failed"
    failed = events[-1].payload.turn_failed
    assert failed.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "MODEL_TIMEOUT" in str(failed.error)
    turn = (
        await agents.GetTurn(
            pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=failed.turn.turn_id)
        )
    ).turn
    assert turn.status == t.TURN_STATUS_FAILED and turn.error == failed.error


# ---------------------------------------------------------------------------- deletes


async def _count_rows(server, table: str) -> int:
    sql = f"SELECT count(*) FROM {table}"
    return await server.db.read(lambda conn: conn.exec_driver_sql(sql).scalar_one())


@pytest.mark.parametrize("delete", ["session", "agent"])
async def test_deleting_cancels_the_running_turns_first(server, agents, fake, delete):
    fake.script(Reply(text="never finished", hang=True))
    agent_id, session_id = await new_session(agents)
    call = stream_turn(agents, agent_id, session_id, background=True)
    async for response in call:
        turn_id = response.event.payload.turn_start.turn_id
        break
    call.cancel()
    run = server.runs.get(LOCAL_PRINCIPAL, turn_id)
    assert run is not None and run.terminal is None
    if delete == "session":
        await agents.DeleteSession(pb.DeleteSessionRequest(agent_id=agent_id, session_id=session_id))
    else:
        await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id))
    assert run.ended.is_set()
    assert run.terminal.payload.turn_failed.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert server.runs.get(LOCAL_PRINCIPAL, turn_id) is None
    await asyncio.sleep(0.1)  # nothing writes after the delete
    for table in ("turns", "steps", "run_events", "sessions"):
        assert await _count_rows(server, table) == 0, table
    if delete == "agent":
        assert await _count_rows(server, "agents") == 0


@pytest.mark.parametrize("delete", ["session", "agent"])
async def test_a_turn_whose_rows_went_with_a_delete_is_stopped_by_it(server, agents, fake, delete):
    """A turn that starts while a delete runs, after the delete looked for running turns, is
    stored and then deleted with its session. Here its rows go first (as that delete's would),
    then the delete call, which stops the run at once rather than letting it stream on until
    a write finds nothing."""
    fake.script(Reply(text="never finished", hang=True))
    agent_id, session_id = await new_session(agents)
    call = stream_turn(agents, agent_id, session_id)
    async for response in call:
        turn_id = response.event.payload.turn_start.turn_id
        break
    run = server.runs.get(LOCAL_PRINCIPAL, turn_id)
    assert await server.agent_store.delete_session(LOCAL_PRINCIPAL, agent_id, session_id)
    assert run.terminal is None  # nothing told it
    if delete == "session":
        request = agents.DeleteSession(pb.DeleteSessionRequest(agent_id=agent_id, session_id=session_id))
        assert (await error_of(request))[:2] == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    else:
        await agents.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id))
    assert run.ended.is_set()
    assert run.terminal.payload.turn_failed.error.code == grpc.StatusCode.CANCELLED.value[0]
    rest = [r.event async for r in call]
    assert kinds(rest)[-1] == "turn_failed"


async def test_a_long_session_sends_its_whole_history_in_order_every_turn(agents, fake):
    # From the third turn on, the settled turns' messages come from memory in one piece
    # (_SessionHistory.settled_messages), each message encoded once (ChatMessage.wire_json).
    fake.script(*[Reply(text=f"a{i}") for i in range(6)])
    agent_id, session_id = await new_session(agents)
    expected = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        await agents.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user(f"q{i}")])
        )
        expected.append({"role": "user", "content": f"q{i}"})
        assert fake.chat_requests[i].body["messages"] == expected, i
        expected.append({"role": "assistant", "content": f"a{i}"})


async def test_the_history_cache_keeps_no_more_messages_than_its_bound(database_url, tmp_path, fake,
                                                                        monkeypatch):
    """Bounded by the messages it holds, not only by sessions: a long session leaves it, and
    its next turn rebuilds the history from the stored steps."""
    monkeypatch.setattr(turn_engine_module, "HISTORY_CACHE_MESSAGES", 5)
    fake.script(*(Reply(text=f"a{i}") for i in range(1, 5)))
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake))
    async with running(settings) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents = agents_pb2_grpc.AgentsServiceStub(channel)
        agent_id, session_id = await new_session(agents)
        held = []
        for i in range(1, 5):
            await agents.CreateTurn(pb.CreateTurnRequest(
                agent_id=agent_id, session_id=session_id, messages=[user(f"u{i}")]))
            held.append((len(server.turns._histories), server.turns._histories.weight))
    assert held[:3] == [(1, 2), (1, 4), (0, 0)]  # two messages a turn; past 5 the session goes
    assert [m["content"] for m in fake.chat_requests[3].body["messages"]] == [
        "Be brief.", "u1", "a1", "u2", "a2", "u3", "a3", "u4"]


async def test_history_sees_turns_another_replica_added_to_the_session(
    database_url, tmp_path, server, agents, fake
):
    # The ended turns' history is cached per session in memory; a turn that another replica
    # ran in between is still read (and the cached ones kept in order around it).
    fake.script(Reply(text="a1"), Reply(text="b1"), Reply(text="a2"))
    agent_id, session_id = await new_session(agents)
    await agents.CreateTurn(
        pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("one")])
    )
    model = {"id": "test-model"}
    providers = [{"id": "fake", "type": "openai", "base_url": fake.base_url, "models": [model]}]
    other = Agentd(make_settings(database_url, tmp_path, providers=providers))
    await other.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.grpc_port}") as channel:
            replica = agents_pb2_grpc.AgentsServiceStub(channel)
            await replica.CreateTurn(
                pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("two")])
            )
    finally:
        await other.stop(0)
    await agents.CreateTurn(
        pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("three")])
    )
    assert fake.chat_requests[2].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "b1"},
        {"role": "user", "content": "three"},
    ]


# ---------------------------------------------------------------------------- shutdown


async def _a_turn_that_fails_in_an_outage(agents, fake, database_url, outage_after_s: float = 0.0):
    """A streamed turn whose model goes away while the database refuses connections (for
    `outage_after_s` more once the stream has ended): the stream ends with turn_failed, and
    once the database answers the turn is read back as stored. Returns it, its events and
    the ids that name it."""
    fake.script(Reply(text="abcdefghij", chunk_size=1, chunk_delay=0.1, disconnect_after_chunks=6))
    agent_id, session_id = await new_session(agents)
    call = stream_turn(agents, agent_id, session_id)
    reader = aiter(call)
    seen = [(await anext(reader)).event]  # turn_start
    async with database_refusing_connections(database_url):
        seen += [r.event async for r in reader]
        await asyncio.sleep(outage_after_s)
    assert kinds(seen)[-1] == "turn_failed"
    ids = {"agent_id": agent_id, "session_id": session_id, "turn_id": seen[0].payload.turn_start.turn_id}

    async def read():
        return (await agents.GetTurn(pb.GetTurnRequest(**ids))).turn
    return await once_ended(read, t.TURN_STATUS_IN_PROGRESS), seen, ids


async def test_a_turn_whose_end_the_database_refused_is_kept_once_it_answers(agents, fake, database_url):
    """The database goes away mid-turn: the stream ends with turn_failed, and once the
    database answers again the turn is stored failed and its session takes a new turn (it
    stayed in_progress, the session busy, until its lease ran out)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connections can be refused from outside; an SQLite file cannot")
    stored, _, ids = await _a_turn_that_fails_in_an_outage(agents, fake, database_url)
    assert stored.status == t.TURN_STATUS_FAILED
    fake.script(Reply(text="back"))
    session = {"agent_id": ids["agent_id"], "session_id": ids["session_id"]}
    after = (await agents.CreateTurn(pb.CreateTurnRequest(**session, messages=[user("again")]))).turn
    assert after.status == t.TURN_STATUS_COMPLETED


async def test_a_turn_whose_end_waits_out_an_outage_longer_than_its_lease_keeps_its_own_end(
        database_url, tmp_path, fake):
    """Its replica still vouches for the turn while the end is retried: its own recovery, once
    the database answers, leaves it alone, and the turn is stored failed, not interrupted."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connections can be refused from outside; an SQLite file cannot")
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake), run_lease_s=0.6)
    async with running(settings) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents = agents_pb2_grpc.AgentsServiceStub(channel)
        # The stream ends, then the database stays away past the turn's lease.
        stored, seen, ids = await _a_turn_that_fails_in_an_outage(agents, fake, database_url,
                                                                  outage_after_s=1.5)
        assert stored.status == t.TURN_STATUS_FAILED
        kept = await collect(agents.StreamTurnEvents(pb.StreamTurnEventsRequest(**ids)))
        assert [e.sequence_number for e in kept] == [e.sequence_number for e in seen]
        assert kinds(kept)[-1] == "turn_failed"


async def test_a_turn_whose_end_is_retried_keeps_its_lease_renewed(database_url, tmp_path, fake, monkeypatch):
    """Its replica still vouches for it: once the database answers, the lease goes on being
    renewed until the end is kept, so no other replica's recovery ends it meanwhile."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connections can be refused from outside; an SQLite file cannot")
    monkeypatch.setattr(runs_module, "KEEP_RETRY_FIRST_S", 3.0)  # the end is kept late
    fake.script(Reply(text="abcdefghij", chunk_size=1, chunk_delay=0.1, disconnect_after_chunks=6))
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake), run_lease_s=0.6)
    reader = create_async_engine(normalize_url(database_url))

    async def lease(turn_id: str) -> tuple[str, int]:
        async with reader.connect() as conn:
            row = (await conn.exec_driver_sql(
                f"SELECT status, lease_until FROM turns WHERE id = '{turn_id}'")).one()
        return row.status, row.lease_until
    try:
        async with running(settings) as server, \
                grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            agents = agents_pb2_grpc.AgentsServiceStub(channel)
            agent_id, session_id = await new_session(agents)
            stream = aiter(stream_turn(agents, agent_id, session_id))
            turn_id = (await anext(stream)).event.payload.turn_start.turn_id
            async with database_refusing_connections(database_url):
                assert kinds([r.event async for r in stream])[-1] == "turn_failed"
            before = await lease(turn_id)
            await asyncio.sleep(1.0)  # three renewals of a 0.6 s lease; the keep waits 3 s
            after = await lease(turn_id)
    finally:
        await reader.dispose()
    assert before[0] == after[0] == "in_progress"
    assert after[1] > before[1] + 500_000  # microseconds


async def test_streams_of_runs_the_shutdown_stops_end_with_the_runs_end(database_url, tmp_path, fake):
    """A turn still running when the grace is over is interrupted; its gRPC and REST streams
    get its turn_failed and end cleanly, not cut by the transports' own stop."""
    fake.script(Reply(text="never", hang=True), Reply(text="never", hang=True))
    server = Agentd(make_settings(database_url, tmp_path, providers=fake_model_providers(fake)))
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as http:
        agents = agents_pb2_grpc.AgentsServiceStub(channel)
        agent_id, session_id = await new_session(agents)
        rest_agent, rest_session = await new_session(agents)
        call = stream_turn(agents, agent_id, session_id)
        seen = [(await anext(aiter(call))).event]
        async with http.stream("POST", f"/v1alpha/agents/{rest_agent}/session/{rest_session}/turn",
                               json={"messages": [{"role": "user", "content": "hi"}], "stream": True}) as sse:
            assert sse.status_code == 200, await sse.aread()
            lines = sse.aiter_lines()
            while "turn_start" not in await anext(lines):
                pass
            stopping = asyncio.create_task(server.stop(0.2))
            seen += [response.event async for response in call]  # ends OK: no AioRpcError
            rest = [line async for line in lines]
        await stopping
    assert kinds(seen)[-1] == "turn_failed"
    assert seen[-1].payload.turn_failed.turn.status == t.TURN_STATUS_INTERRUPTED
    data = [json.loads(line[5:]) for line in rest if line.startswith("data:")]
    assert data and "error" in data[-1]  # the REST stream's turn_failed, as Llama Stack writes it


async def test_a_turn_or_a_resume_while_the_server_drains_fails_before_writing_anything(
    database_url, tmp_path, fake
):
    settings = make_settings(
        database_url,
        tmp_path,
        providers=fake_model_providers(fake),
    )
    server = Agentd(settings)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        agents = agents_pb2_grpc.AgentsServiceStub(channel)
        agent_id, session_id = await new_session(agents, client_tools=[tool_def("get_weather")])
        fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="c1")]))
        paused = terminal_turn(await collect(stream_turn(agents, agent_id, session_id, user("weather?"))))
        assert paused.status == t.TURN_STATUS_AWAITING_INPUT
        idle_agent, idle_session = await new_session(agents)
    store = server.agent_store
    async with draining(server):
        with pytest.raises(Unavailable) as refused:
            await server.turns.start_turn(LOCAL_PRINCIPAL, idle_agent, idle_session, messages=[user("hi")])
        assert refused.value.reason == "SHUTTING_DOWN"
        assert status_of(refused.value).code == grpc.StatusCode.UNAVAILABLE.value[0]
        answer = m.AgentToolResponse(
            call_id="c1", tool_name="get_weather", content=m.InterleavedContent(text="sun")
        )
        with pytest.raises(Unavailable) as refused:
            await server.turns.resume_turn(
                LOCAL_PRINCIPAL, agent_id, session_id, paused.turn_id, tool_responses=[answer]
            )
        assert refused.value.reason == "SHUTTING_DOWN"
        # Nothing was written: no turn in the idle session, the paused turn still paused.
        assert await store.session_turn_statuses(LOCAL_PRINCIPAL, idle_session) == []
        assert await store.turn_status(LOCAL_PRINCIPAL, session_id, paused.turn_id) == "awaiting_input"
    assert len(fake.chat_requests) == 1
