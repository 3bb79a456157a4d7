"""Turns with llama-stack-client 0.2.12 against a real `agentd serve` and the fake model:
a streamed turn, a non-streamed one, and the SDK's Agent and AsyncAgent helpers running a
client tool."""

from __future__ import annotations

import json
import time

import llama_stack_client
import pytest
from llama_stack_client import Agent, AsyncLlamaStackClient, LlamaStackClient
from llama_stack_client.lib.agents.agent import AsyncAgent
from llama_stack_client.lib.agents.client_tool import client_tool
from llama_stack_client.types.agents.session import Session
from llama_stack_client.types.agents.turn import Turn

from tests.e2e.conftest import start_agentd
from tests.fakes.openai_server import Reply, ToolCallSpec


@pytest.fixture(scope="module")
def agentd(tmp_path_factory, fake):
    providers = [
        {"id": "fake", "type": "openai", "base_url": fake.base_url, "models": [{"id": "test-model"}]}
    ]
    handle = start_agentd(tmp_path_factory.mktemp("agentd"), AGENTD_PROVIDERS=json.dumps(providers))
    yield handle
    assert handle.terminate() == 0, handle.log()


@pytest.fixture
def client(agentd, fake):
    fake.reset()
    with LlamaStackClient(base_url=agentd.base_url, max_retries=0) as client:
        yield client


# The model asks for the client tool, then answers with its result.
PARIS_WEATHER = (Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="call_1")]),
                 Reply(text="It is sunny in Paris."))


def _agent(client, **config) -> tuple[str, str]:
    agent_id = client.agents.create(
        agent_config={"model": "test-model", "instructions": "Be brief.", **config}
    ).agent_id
    session_id = client.agents.session.create(agent_id=agent_id, session_name="s").session_id
    return agent_id, session_id


def test_a_streamed_turn(client, fake):
    fake.script(Reply(text="Hello from agentd", chunk_size=5))
    agent_id, session_id = _agent(client)
    chunks = list(
        client.agents.turn.create(
            agent_id=agent_id,
            session_id=session_id,
            stream=True,
            messages=[{"role": "user", "content": "hi"}],
        )
    )
    kinds = [c.event.payload.event_type for c in chunks]
    assert kinds[0] == "turn_start" and kinds[-1] == "turn_complete"
    assert "step_progress" in kinds
    text = "".join(
        c.event.payload.delta.text for c in chunks if c.event.payload.event_type == "step_progress"
    )
    assert text == "Hello from agentd"
    turn = chunks[-1].event.payload.turn
    assert turn.output_message.content == "Hello from agentd"
    assert turn.steps[0].step_type == "inference"
    again = client.agents.turn.retrieve(agent_id=agent_id, session_id=session_id, turn_id=turn.turn_id)
    assert again.output_message.content == "Hello from agentd"


def test_a_non_streamed_turn(client, fake):
    fake.script(Reply(text="Unary"))
    agent_id, session_id = _agent(client)
    turn = client.agents.turn.create(
        agent_id=agent_id, session_id=session_id, stream=False, messages=[{"role": "user", "content": "hi"}]
    )
    assert turn.output_message.content == "Unary"


def test_a_turn_with_an_image_sends_it_to_the_model(client, fake):
    fake.script(Reply(text="A llama."))
    agent_id, session_id = _agent(client)
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image", "image": {"url": {"uri": "https://example.com/llama.jpg"}}}]
    turn = client.agents.turn.create(agent_id=agent_id, session_id=session_id, stream=False,
                                     messages=[{"role": "user", "content": content}])
    assert turn.output_message.content == "A llama."
    assert turn.input_messages[0].content[1].image.url.uri == "https://example.com/llama.jpg"
    assert fake.chat_requests[0].body["messages"][-1]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/llama.jpg"}}]


def test_a_non_streamed_turn_that_fails_raises(client, fake):
    fake.script(Reply(error_status=503, error_message="overloaded"))
    agent_id, session_id = _agent(client)
    with pytest.raises(llama_stack_client.InternalServerError) as caught:
        client.agents.turn.create(
            agent_id=agent_id, session_id=session_id, stream=False,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert caught.value.status_code == 503 and "overloaded" in str(caught.value)


def test_turns_without_an_answer_parse_as_the_sdk_types(client, fake):
    """A failed, a running and a cancelled turn: Llama Stack's Turn requires output_message,
    so theirs is an empty assistant message, never null."""
    fake.script(Reply(error_status=503, error_message="overloaded"), Reply(text="never", hang=True))
    agent_id, session_id = _agent(client)
    with pytest.raises(llama_stack_client.InternalServerError):
        client.agents.turn.create(agent_id=agent_id, session_id=session_id, stream=False,
                                  messages=[{"role": "user", "content": "hi"}])
    stream = client.agents.turn.create(agent_id=agent_id, session_id=session_id, stream=True,
                                       messages=[{"role": "user", "content": "again"}])
    assert next(iter(stream)).event.payload.event_type == "turn_start"

    def session() -> dict:
        raw = client.get(f"/v1/agents/{agent_id}/session/{session_id}", cast_to=object)
        Session.model_validate(raw)  # strict: raises on a turn the SDK cannot read
        return raw

    assert [t["status"] for t in session()["turns"]] == ["failed", "in_progress"]
    stream.close()  # not background: the turn is cancelled
    for _ in range(100):
        turns = session()["turns"]
        if turns[1]["status"] != "in_progress":
            break
        time.sleep(0.05)
    assert [t["status"] for t in turns] == ["failed", "cancelled"]
    for turn in turns:
        assert turn["output_message"] == {"role": "assistant", "content": "", "stop_reason": "end_of_turn",
                                          "tool_calls": []}
        got = client.get(f"/v1/agents/{agent_id}/session/{session_id}/turn/{turn['turn_id']}", cast_to=object)
        assert Turn.model_validate(got).output_message.content == ""


def test_the_agent_helper_runs_a_client_tool_and_resumes(client, fake):
    calls = []

    @client_tool
    def get_weather(city: str) -> str:
        """Weather for a city.

        :param city: The city
        """
        calls.append(city)
        return f"sunny in {city}"

    fake.script(*PARIS_WEATHER)
    agent = Agent(client, model="test-model", instructions="Be brief.", tools=[get_weather])
    session_id = agent.create_session("trip")
    chunks = list(
        agent.create_turn(
            messages=[{"role": "user", "content": "Weather in Paris?"}], session_id=session_id, stream=True
        )
    )
    assert calls == ["Paris"]
    last = chunks[-1].event.payload
    assert last.event_type == "turn_complete"
    assert last.turn.output_message.content == "It is sunny in Paris."
    step_types = [s.step_type for s in last.turn.steps]
    assert step_types == ["inference", "tool_execution", "inference"]
    # (The SDK sends a tool's result JSON-encoded.)
    assert fake.chat_requests[1].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": json.dumps("sunny in Paris"),
    }


async def test_the_async_agent_helper_runs_a_client_tool(agentd, fake):
    # AsyncAgent calls the tool with **tool_call.arguments: the /v1 routes send the arguments
    # as an object, with the string under arguments_json (Llama Stack 0.2's JSON).
    fake.reset()
    calls = []

    @client_tool
    async def get_weather(city: str) -> str:
        """Weather for a city.

        :param city: The city
        """
        calls.append(city)
        return f"sunny in {city}"

    fake.script(*PARIS_WEATHER)
    async with AsyncLlamaStackClient(base_url=agentd.base_url, max_retries=0) as client:
        agent = AsyncAgent(client, model="test-model", instructions="Be brief.", tools=[get_weather])
        await agent.initialize()
        session_id = await agent.create_session("trip")
        chunks = [chunk async for chunk in await agent.create_turn(
            messages=[{"role": "user", "content": "Weather in Paris?"}], session_id=session_id, stream=True)]
    assert calls == ["Paris"]
    last = chunks[-1].event.payload
    assert last.event_type == "turn_complete" and last.turn.output_message.content == "It is sunny in Paris."
    call = last.turn.steps[0].api_model_response.tool_calls[0]
    assert (call.arguments, call.arguments_json) == ({"city": "Paris"}, '{"city":"Paris"}')
