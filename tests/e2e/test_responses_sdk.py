"""Responses with the real openai SDK against a real `agentd serve` (the gateway's OpenAI
routes) and the scripted fake model: create/retrieve/delete/input_items, chains, stream(),
parse(), function tools, store=false, background + poll + cancel, re-attaching a dropped
stream, and the SDK's error classes."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.conftest import start_agentd_with_fake_model
from tests.fakes.openai_server import Reply, ToolCallSpec

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}



@pytest.fixture(scope="module")
def agentd(tmp_path_factory, fake):
    handle = start_agentd_with_fake_model(tmp_path_factory.mktemp("agentd"), fake)
    yield handle
    assert handle.terminate() == 0, handle.log()


@pytest.fixture
def client(agentd, fake):
    fake.reset()
    with openai.OpenAI(base_url=f"{agentd.base_url}/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def wait_for(client, response_id: str, *statuses: str):
    for _ in range(500):
        response = client.responses.retrieve(response_id)
        if response.status in statuses:
            return response
        time.sleep(0.01)
    raise AssertionError(f"{response_id} stayed {response.status}")


def test_create_retrieve_delete(client, fake):
    fake.script(Reply(text="Hello from agentd", usage={"prompt_tokens": 3, "completion_tokens": 3}))
    response = client.responses.create(model="test-model", input="hi", instructions="Be brief.",
                                       metadata={"team": "a"}, temperature=0.2)
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "Hello from agentd"
    assert response.usage.input_tokens == 3 and response.usage.total_tokens == 6
    assert response.instructions == "Be brief." and response.metadata == {"team": "a"}
    assert response.temperature == 0.2 and response.tool_choice == "auto"
    again = client.responses.retrieve(response.id)
    assert again.output_text == "Hello from agentd" and again.id == response.id
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(response.id)
    assert caught.value.body["code"] == "response_not_found"


def test_an_input_image_is_sent_to_the_model(client, fake):
    fake.script(Reply(text="A llama."))
    response = client.responses.create(model="test-model", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/llama.jpg", "detail": "high"}]}])
    assert response.output_text == "A llama."
    image = client.responses.input_items.list(response.id).data[0].content[1]
    assert (image.type, image.detail) == ("input_image", "high")
    assert image.image_url == "https://example.com/llama.jpg"
    assert fake.chat_requests[0].body["messages"][-1]["content"][1] == {
        "type": "image_url", "image_url": {"url": "https://example.com/llama.jpg", "detail": "high"}}


def test_input_items_page_both_ways(client, fake):
    response = client.responses.create(
        model="test-model", input=[{"role": "user", "content": f"Message {c}"} for c in "ABCDE"])
    first = client.responses.input_items.list(response.id, limit=2)
    assert [i.content[0].text for i in first.data] == ["Message E", "Message D"] and first.has_more
    every = list(client.responses.input_items.list(response.id, limit=2, order="asc"))  # auto-paging
    assert [i.content[0].text for i in every] == [f"Message {c}" for c in "ABCDE"]
    after = client.responses.input_items.list(response.id, order="asc", after=every[1].id, limit=2)
    assert [i.content[0].text for i in after.data] == ["Message C", "Message D"]
    assert after.first_id == every[2].id and after.last_id == every[3].id and after.has_more
    before = client.responses.input_items.list(response.id, order="asc", extra_query={"before": every[3].id})
    assert [i.content[0].text for i in before.data] == ["Message A", "Message B", "Message C"]
    assert not before.has_more


def test_previous_response_id_chains(client, fake):
    fake.script(Reply(text="Earth"), Reply(text="EARTH"))
    first = client.responses.create(model="test-model", input="Which planet?")
    second = client.responses.create(model="test-model", input="Repeat in capitals.",
                                     previous_response_id=first.id)
    assert second.output_text == "EARTH" and second.previous_response_id == first.id
    assert [m["content"] for m in fake.chat_requests[1].body["messages"]] == [
        "Which planet?", "Earth", "Repeat in capitals."]


def test_stream_helper(client, fake):
    fake.script(Reply(text="Streaming works", chunk_size=3))
    with client.responses.stream(model="test-model", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Streaming works"
    assert final.output_text == "Streaming works"


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_pydantic_model(client, fake):
    fake.script(Reply(text='{"name": "Paris", "country": "France"}'))
    parsed = client.responses.parse(model="test-model", input="Capital of France?", text_format=City)
    assert parsed.output_parsed == City(name="Paris", country="France")
    sent = fake.chat_requests[0].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"
    assert sent["json_schema"]["strict"] is True and "name" in sent["json_schema"]["schema"]["properties"]


def test_function_tool_round_trip_with_two_parallel_calls(client, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}),
                                  ToolCallSpec("get_weather", {"city": "Rome"})]),
                Reply(text="Sunny in Paris, rainy in Rome."))
    first = client.responses.create(model="test-model", input="Weather in Paris and Rome?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 2 and {json.loads(c.arguments)["city"] for c in calls} == {"Paris", "Rome"}
    outputs = [{"type": "function_call_output", "call_id": c.call_id,
                "output": "sunny" if "Paris" in c.arguments else "rainy"} for c in calls]
    second = client.responses.create(model="test-model", previous_response_id=first.id, input=outputs,
                                     tools=[WEATHER])
    assert second.output_text == "Sunny in Paris, rainy in Rome."
    tool_messages = [m for m in fake.chat_requests[1].body["messages"] if m["role"] == "tool"]
    # Each output reaches the model as the answer to its own call.
    assert {m["tool_call_id"]: m["content"] for m in tool_messages} == {
        o["call_id"]: o["output"] for o in outputs}


def test_store_false_is_not_retrievable(client, fake):
    fake.script(Reply(text="Ephemeral"))
    response = client.responses.create(model="test-model", input="hi", store=False)
    assert response.output_text == "Ephemeral" and response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_background_poll_and_cancel(client, fake):
    fake.script(Reply(text="Background answer", chunk_size=2, chunk_delay=0.01), Reply(text="x", hang=True))
    response = client.responses.create(model="test-model", input="hi", background=True)
    assert response.status == "queued" and response.background is True
    done = wait_for(client, response.id, "completed")
    assert done.output_text == "Background answer"
    hanging = client.responses.create(model="test-model", input="hi", background=True)
    wait_for(client, hanging.id, "in_progress")
    fake.wait_for_requests(2, timeout=30)  # the model has it: the cancel stops a running call
    cancelled = client.responses.cancel(hanging.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(hanging.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(done.id)
    assert caught.value.body["code"] == "response_not_cancellable"


def test_re_attach_with_starting_after_after_a_dropped_stream(client, fake, agentd):
    fake.script(Reply(text="0123456789", chunk_size=1, chunk_delay=0.02))
    seen = []
    stream = client.responses.create(model="test-model", input="count", stream=True, background=True)
    for event in stream:
        seen.append(event)
        if len(seen) == 6:
            break
    stream.close()  # the client drops mid-stream; a background response runs on
    response_id = seen[0].response.id
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number))
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "0123456789"
    # Last-Event-ID stands for starting_after on the SSE route.
    with httpx.stream("GET", f"{agentd.base_url}/v1/responses/{response_id}?stream=true",
                      headers={"Last-Event-ID": str(len(events) - 2)}) as replay:
        lines = [line for line in replay.iter_lines() if line]
    assert lines[:2] == [f"id: {len(events) - 1}", "event: response.completed"]


def test_error_classes(client, fake):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    with pytest.raises(openai.BadRequestError) as caught:  # OpenAI's 400 for an unknown model
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:  # OpenAI's 400, not a 404
        client.responses.create(model="test-model", input="hi", previous_response_id="resp_missing",
                                stream=True)
    assert caught.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="test-model", input="hi", temperature=5, stream=True)
    assert caught.value.body["param"] == "temperature"
    assert caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="test-model", tools=[{"type": "web_search"}], input="hi")
    assert caught.value.body["param"] == "tools[0]"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="test-model", input=[
            {"type": "function_call_output", "call_id": "call_unpaired", "output": "1"}])
    assert caught.value.body["param"] == "input" and "call_unpaired" in caught.value.message
    assert not fake.chat_requests


def test_stream_helper_with_parallel_function_calls(client, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}),
                                  ToolCallSpec("get_weather", {"city": "Rome"})],
                      interleave_tool_calls=True, chunk_size=3))
    with client.responses.stream(model="test-model", input="Weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert sorted(e.output_index for e in done) == [0, 1]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert all(c.status == "completed" for c in calls)
