"""The embedded model, really loaded: the packaged SmolLM2-135M-Instruct answering through
agentd (greedy, so the answers are the same on every run), served next to an OpenAI-compatible
provider, and producing client tool calls from its constrained JSON replies."""

from __future__ import annotations

import json
import logging

import grpc
import httpx
import openai
import pytest
import pytest_asyncio
from google.protobuf import json_format

from agentd.app import Agentd, StartError
from agentd.inference import local_provider
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import models_pb2
from agentd.v1 import turn_events_pb2 as te
from tests.conftest import make_settings
from tests.integration.test_turns import collect, kinds, stream_turn, terminal_turn, user

LOCAL_MODEL = "SmolLM2-135M-Instruct.Q4_1"
GREEDY = t.SamplingParams(strategy=t.SamplingStrategy(greedy=t.GreedySamplingStrategy()), max_tokens=48)


@pytest_asyncio.fixture
async def agentd(tmp_path):
    """Overrides conftest's (whose channel, agents and models fixtures build on it): SQLite, as
    `make run` has it, and the packaged model (local_model unset) next to conftest's
    OpenAI-compatible provider."""
    server = Agentd(make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path, local_model=None))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def new_session(agents, **config) -> tuple[str, str]:
    cfg = t.AgentConfig(model=LOCAL_MODEL, instructions="Be brief.", sampling_params=GREEDY, **config)
    agent = await agents.CreateAgent(pb.CreateAgentRequest(agent_config=cfg))
    session = await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent.agent_id, session_name="s"))
    return agent.agent_id, session.session_id


async def test_the_packaged_model_streams_a_greedy_answer_through_stream_turn(agents):
    agent_id, session_id = await new_session(agents)
    events = await collect(stream_turn(agents, agent_id, session_id, user("What is the capital of France?")))
    got = kinds(events)
    assert got[:2] == ["turn_start", "step_start:inference"]
    assert got[-2:] == ["step_complete:inference", "turn_complete"]
    texts = [e.payload.step_progress.delta.text.text for e in events if e.payload.HasField("step_progress")]
    assert len(texts) > 3  # streamed token by token, not in one piece
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED
    assert turn.output_message.content.text == "".join(texts)
    assert "Paris" in turn.output_message.content.text
    usage = turn.steps[0].inference.usage
    assert 0 < usage.output_tokens <= 48 and usage.input_tokens > 0


async def test_a_client_tool_call_comes_from_the_model_and_the_turn_resumes(agents):
    schema = json_format.ParseDict({"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}, t.AgentToolDef().input_schema)
    weather = t.AgentToolDef(name="get_weather", description="Get the current weather for a city.",
                             input_schema=schema)
    agent_id, session_id = await new_session(agents, client_tools=[weather])
    events = await collect(stream_turn(agents, agent_id, session_id, user("What is the weather in Paris?")))
    paused = terminal_turn(events)
    assert paused.status == t.TURN_STATUS_AWAITING_INPUT
    assert paused.stop_reason == t.TURN_STOP_REASON_CLIENT_TOOL_CALLS
    [call] = paused.output_message.tool_calls
    assert call.tool_name == "get_weather" and call.call_id.startswith("call_")
    assert set(json.loads(call.arguments)) == {"city"}
    parsed = [e.payload.step_progress.delta.tool_call for e in events if e.payload.HasField("step_progress")
              and e.payload.step_progress.delta.HasField("tool_call")]
    assert parsed[-1].parse_status == te.TOOL_CALL_PARSE_STATUS_SUCCEEDED
    # The result goes back to the model, which answers with it.
    resumed = await collect(agents.StreamResumeTurn(pb.StreamResumeTurnRequest(
        agent_id=agent_id, session_id=session_id, turn_id=paused.turn_id,
        tool_responses=[{"call_id": call.call_id, "tool_name": "get_weather",
                         "content": {"text": "Sunny, 21 degrees C."}}])))
    assert kinds(resumed)[0] == "step_complete:tool_execution"
    answered = terminal_turn(resumed)
    assert answered.status == t.TURN_STATUS_COMPLETED and answered.output_message.content.text
    assert [s.WhichOneof("step") for s in answered.steps] == ["inference", "tool_execution", "inference"]


async def test_the_local_model_is_listed_next_to_the_openai_provider(agentd, models):
    listed = await models.ListModels(models_pb2.ListModelsRequest())
    assert [(m.id, m.provider_id) for m in listed.data] == [
        ("test-model", "fake"), ("org/test-embed", "fake"), (LOCAL_MODEL, "local")]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agentd.http_port}") as http:
        body = (await http.get("/v1/models")).json()
    local = next(m for m in body["data"] if m["id"] == LOCAL_MODEL)
    assert local["provider_id"] == "local" and local["model_type"] == "llm"
    assert agentd.registry.provider_for("test-model") is not agentd.registry.provider_for(LOCAL_MODEL)


async def test_a_model_file_that_does_not_load_stops_the_start(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model")
    server = Agentd(make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path, local_model=str(bad)))
    with pytest.raises(StartError, match=r"provider 'local': cannot load .*broken\.gguf"):
        await server.start()


async def test_without_the_packaged_model_agentd_starts_without_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(local_provider, "PACKAGED_MODEL_PACKAGE", "no_such_model_package")
    server = Agentd(make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path, local_model=None))
    with caplog.at_level(logging.WARNING, logger="agentd.inference"):
        await server.start()
    try:
        assert [m.id for m in server.registry.models()] == ["test-model", "org/test-embed"]
        assert "provider 'local': the packaged model is not installed" in caplog.text
    finally:
        await server.stop(0)


def openai_client(agentd) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{agentd.http_port}/v1", api_key="none")


async def test_the_packaged_model_streams_a_greedy_answer_through_the_responses_api(agentd):
    async with openai_client(agentd) as client, client.responses.stream(
            model=LOCAL_MODEL, input="What is the capital of France?", temperature=0,
            max_output_tokens=48) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert len(deltas) > 3  # streamed token by token, not in one piece
    assert final.status == "completed" and final.output_text == "".join(deltas)
    assert "Paris" in final.output_text
    assert 0 < final.usage.output_tokens <= 48


async def test_a_function_call_comes_from_the_model_through_the_responses_api(agentd):
    tools = [{"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}, "strict": False}]
    async with openai_client(agentd) as client:
        asked = await client.responses.create(model=LOCAL_MODEL, input="What is the weather in Paris?",
                                              tools=tools, temperature=0)
        [call] = [item for item in asked.output if item.type == "function_call"]
        assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
        answered = await client.responses.create(
            model=LOCAL_MODEL, previous_response_id=asked.id, tools=tools, temperature=0,
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "Sunny, 21 degrees C."}])
    assert answered.status == "completed" and answered.output_text


async def test_an_image_sent_to_the_packaged_model_which_reads_text_only_is_refused_clearly(agents):
    # The packaged model has no vision; its server refuses the image, and the turn says why.
    agent_id, session_id = await new_session(agents)
    image = m.InterleavedContentItem(image=m.ImageContentItem(image=m.AgentImage(
        url=m.AgentURL(uri="https://example.com/llama.jpg"))))
    events = await collect(stream_turn(agents, agent_id, session_id, m.TurnInputMessage(
        user=m.UserMessage(content=m.InterleavedContent(item=image)))))
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_FAILED
    assert turn.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "reads text only" in turn.error.message
