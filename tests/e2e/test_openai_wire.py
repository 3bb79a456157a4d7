"""OpenAI wire conformance of the Responses and Conversations routes: every JSON object and
every SSE event the gateway sends for every shape the API produces is validated against the
openai SDK's own pydantic types, strictly: no required field missing, no key the SDK type
does not declare, the `type` / `object` literals right, `sequence_number` dense from 0, the
SSE `event:` line equal to the JSON `type`. Error bodies are OpenAI's
{"error": {"message", "type", "param", "code"}}.

One `agentd serve` (SQLite) for the module, with the scripted fake model and the fake search
API as its only fakes."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent

from tests.e2e.conftest import PROVIDERS, start_agentd
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.fakes.search_server import FakeSearchServer, Hit, SearchReply
from tests.openai_conformance import conforms, ok, openai_error

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}, "strict": True}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}


# ------------------------------------------------------------------ strict validation


def sse_events(response: httpx.Response) -> list[dict]:
    """The events of an OpenAI SSE stream, each checked: `event:` = `type`, `id:` (when
    sent) = `sequence_number`, the SDK's event type, sequence numbers dense from 0."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    events, fields = [], {}
    for line in [*response.iter_lines(), ""]:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if not fields:
            continue
        event = json.loads(fields["data"])
        assert fields.get("event") == event["type"], fields
        if "id" in fields:
            assert fields["id"] == str(event["sequence_number"]), fields
        conforms(ResponseStreamEvent, event)
        events.append(event)
        fields = {}
    first = events[0]["sequence_number"] if events else 0
    assert [e["sequence_number"] for e in events] == list(range(first, first + len(events)))
    return events


# ------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def search():
    with FakeSearchServer() as server:
        yield server


@pytest.fixture(scope="module")
def agentd(tmp_path_factory, fake, search):
    providers = [{**PROVIDERS[0], "base_url": fake.base_url}]
    handle = start_agentd(tmp_path_factory.mktemp("agentd"), AGENTD_PROVIDERS=json.dumps(providers),
                          AGENTD_WEBSEARCH_API_KEY="sk-search", AGENTD_WEBSEARCH_BASE_URL=search.base_url)
    yield handle
    assert handle.terminate() == 0, handle.log()


@pytest.fixture
def http(agentd, fake):
    fake.reset()
    with httpx.Client(base_url=f"{agentd.base_url}/v1", timeout=30) as client:
        yield client


def create(http: httpx.Client, **fields) -> dict:
    return ok(http.post("/responses", json={"model": "test-model", "input": "hi", **fields}), Response)


def stream(http: httpx.Client, **fields) -> list[dict]:
    with http.stream("POST", "/responses", json={"model": "test-model", "input": "hi", "stream": True,
                                                 **fields}) as response:
        return sse_events(response)


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


# ------------------------------------------------------------------ responses


def test_a_text_response_unary_and_streamed(http, fake):
    fake.script(Reply(text="Hello there", usage={"prompt_tokens": 3, "completion_tokens": 2}))
    response = create(http, instructions="Be brief.", metadata={"k": "v"}, temperature=0.3)
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "Hello there"
    assert response["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert "max_infer_iters" not in response  # Llama Stack's extension: only when asked for
    fake.script(Reply(text="Hello there"))
    extended = http.post("/responses", json={"model": "test-model", "input": "hi", "max_infer_iters": 3})
    assert extended.status_code == 200, extended.text
    body = extended.json()
    assert body.pop("max_infer_iters") == 3  # echoed when asked for; the rest is strictly OpenAI's
    conforms(Response, body)
    fake.script(Reply(text="Hello there", chunk_size=3))
    events = stream(http)
    assert events[0]["sequence_number"] == 0 and types(events)[0] == "response.created"
    assert types(events)[-1] == "response.completed" and "response.output_text.done" in types(events)
    # The events of a stored response are kept: re-read whole, and from a sequence number.
    with http.stream("GET", f"/responses/{events[0]['response']['id']}", params={"stream": "true"}) as again:
        assert sse_events(again) == events
    with http.stream("GET", f"/responses/{events[0]['response']['id']}", params={"stream": "true"},
                     headers={"Last-Event-ID": "4"}) as rest:
        assert sse_events(rest) == events[5:]


def test_parallel_function_calls_unary_and_streamed(http, fake):
    calls = [ToolCallSpec("get_weather", {"city": "Paris"}, id="call_1"),
             ToolCallSpec("get_weather", {"city": "Rome"}, id="call_2")]
    fake.script(Reply(text="Checking.", tool_calls=calls, interleave_tool_calls=True, chunk_size=4))
    events = stream(http, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=True)
    assert "response.function_call_arguments.delta" in types(events)
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call", "function_call"]
    fake.script(Reply(tool_calls=calls), Reply(text="Sunny in both."))
    first = create(http, tools=[WEATHER])
    second = create(http, tools=[WEATHER], previous_response_id=first["id"], input=[
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "sunny too"}])
    assert second["previous_response_id"] == first["id"] and second["status"] == "completed"
    items = ok(http.get(f"/responses/{second['id']}/input_items"), ResponseItemList)
    assert [(i["type"], i["call_id"], i["output"]) for i in items["data"]] == [  # newest first
        ("function_call_output", "call_2", "sunny too"), ("function_call_output", "call_1", "sunny")]


def test_a_web_search_streamed(http, fake, search):
    search.script(SearchReply(results=[Hit("agentd", "https://agentd.example", "agentd runs agents")]))
    fake.script(Reply(tool_calls=[ToolCallSpec("web_search", {"query": "agentd"}, id="call_s")]),
                Reply(text="agentd runs agents."))
    events = stream(http, tools=[{"type": "web_search"}])
    assert "response.web_search_call.completed" in types(events)
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["web_search_call", "message"]


def test_json_schema_output(http, fake):
    fake.script(Reply(text='{"city": "Paris"}'))
    response = create(http, text={"format": {"type": "json_schema", "name": "City", "schema": CITY,
                                             "strict": True}})
    assert response["text"]["format"]["type"] == "json_schema"
    assert json.loads(response["output"][0]["content"][0]["text"]) == {"city": "Paris"}


def test_an_incomplete_response(http, fake):
    fake.script(Reply(text="cut short", finish_reason="length"))
    events = stream(http, max_output_tokens=16)
    assert types(events)[-1] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    fake.script(Reply(text="cut short", finish_reason="length"))
    assert create(http, max_output_tokens=16)["status"] == "incomplete"


def test_max_infer_iters_is_the_one_incomplete_reason_openai_lacks(http, fake):
    """Llama Stack's extension: the reason is a value the SDK's literal lacks (the SDK builds
    its models without validating, so `reason` reads "max_infer_iters"); the rest conforms."""
    fake.script(Reply(tool_calls=[ToolCallSpec("web_search", {"query": "q"}, id="call_s")]))
    answer = http.post("/responses", json={"model": "test-model", "input": "hi", "max_infer_iters": 1,
                                           "tools": [{"type": "web_search"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body.pop("incomplete_details") == {"reason": "max_infer_iters"}
    assert body.pop("max_infer_iters") == 1 and body["status"] == "incomplete"
    conforms(Response, body)


def test_a_failed_response(http, fake):
    fake.script(Reply(error_status=500, error_message="model down"))
    events = stream(http)
    assert types(events) == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "server_error"
    fake.script(Reply(error_status=500, error_message="model down"))
    failed = create(http)
    assert failed["status"] == "failed"
    assert ok(http.get(f"/responses/{failed['id']}"), Response) == failed


def test_a_cancelled_background_response(http, fake):
    fake.script(Reply(text="never", hang=True))
    created = create(http, background=True)
    assert created["status"] == "queued" and created["background"] is True
    fake.wait_for_requests(1, timeout=30)
    cancelled = ok(http.post(f"/responses/{created['id']}/cancel"), Response)
    assert cancelled["status"] == "cancelled"
    with http.stream("GET", f"/responses/{created['id']}", params={"stream": "true"}) as response:
        events = sse_events(response)
    assert events[0]["sequence_number"] == 0 and events[-1]["response"]["status"] == "cancelled"
    with http.stream("GET", f"/responses/{created['id']}",
                     params={"stream": "true", "starting_after": 0}) as response:
        assert sse_events(response) == events[1:]


def test_get_list_delete_and_input_items(http, fake):
    fake.script(Reply(text="one"), Reply(text="two"))
    first = create(http, input=[{"role": "user", "content": "a"},
                                {"type": "message", "role": "user",
                                 "content": [{"type": "input_text", "text": "b"}]}])
    second = create(http, previous_response_id=first["id"], input="c")
    assert ok(http.get(f"/responses/{first['id']}"), Response) == first
    for params, texts in (({}, ["b", "a"]), ({"order": "asc", "limit": 1}, ["a"])):  # newest first by default
        items = ok(http.get(f"/responses/{first['id']}/input_items", params=params), ResponseItemList)
        assert items["object"] == "list" and [i["content"][0]["text"] for i in items["data"]] == texts
    # The list is Llama Stack's extension (no SDK type): a list page of responses, each with
    # its input items.
    listed = http.get("/responses", params={"limit": 2})
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
    for entry in page["data"]:
        conforms(Response, {k: v for k, v in entry.items() if k != "input"})
        conforms(list[ConversationItem], entry["input"])
    assert [r["id"] for r in page["data"]] == [second["id"], first["id"]]
    deleted = http.delete(f"/responses/{first['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": first["id"], "object": "response", "deleted": True}  # as OpenAI's


def test_a_response_in_a_conversation(http, fake):
    conversation = ok(http.post("/conversations", json={"items": [{"role": "user", "content": "x"}]}),
                      Conversation)
    fake.script(Reply(text="in the conversation"))
    response = create(http, conversation=conversation["id"])
    assert response["conversation"] == {"id": conversation["id"]}
    items = ok(http.get(f"/conversations/{conversation['id']}/items", params={"order": "asc"}),
               ConversationItemList)
    assert [(i["type"], i["role"], i["content"][0]["text"]) for i in items["data"]] == [
        ("message", "user", "x"), ("message", "user", "hi"), ("message", "assistant", "in the conversation")]


def test_a_conversation_keeps_tool_items_in_the_sdk_shape(http, fake, search):
    conversation = ok(http.post("/conversations", json={}), Conversation)
    assert ok(http.get(f"/conversations/{conversation['id']}/items"), ConversationItemList)["data"] == []
    fake.script(Reply(tool_calls=[ToolCallSpec("web_search", {"query": "q"}, id="call_s")]),
                Reply(text="Found.", tool_calls=[ToolCallSpec("get_weather", {"city": "Oslo"}, id="call_w")]))
    stream(http, conversation={"id": conversation["id"]}, tools=[{"type": "web_search"}, WEATHER])
    fake.script(Reply(text="Cold."))
    create(http, conversation=conversation["id"], tools=[WEATHER],
           input=[{"type": "function_call_output", "call_id": "call_w", "output": "-5"}])
    items = ok(http.get(f"/conversations/{conversation['id']}/items", params={"order": "asc"}),
               ConversationItemList)
    assert [i["type"] for i in items["data"]] == [
        "message", "web_search_call", "message", "function_call", "function_call_output", "message"]


def test_conversations_and_their_items(http):
    created = ok(http.post("/conversations", json={"metadata": {"a": "b"}, "items": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"}]}), Conversation)
    cid = created["id"]
    assert ok(http.get(f"/conversations/{cid}"), Conversation) == created
    updated = ok(http.post(f"/conversations/{cid}", json={"metadata": {"c": "d"}}), Conversation)
    assert updated["metadata"] == {"c": "d"}
    added = ok(http.post(f"/conversations/{cid}/items", json={"items": [
        {"type": "message", "role": "assistant", "content": "ok"}]}), ConversationItemList)
    listed = ok(http.get(f"/conversations/{cid}/items", params={"limit": 2}), ConversationItemList)
    assert listed["has_more"] and listed["data"][0]["id"] == added["data"][0]["id"]
    item = ok(http.get(f"/conversations/{cid}/items/{listed['data'][0]['id']}"), ConversationItem)
    ok(http.delete(f"/conversations/{cid}/items/{item['id']}"), Conversation)
    assert ok(http.delete(f"/conversations/{cid}"), ConversationDeletedResource)["deleted"] is True


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("method, path", [
    ("GET", "/responses/resp_nope"), ("DELETE", "/responses/resp_nope"),
    ("GET", "/responses/resp_nope/input_items"), ("POST", "/responses/resp_nope/cancel"),
    ("GET", "/conversations/conv_nope"), ("GET", "/conversations/conv_nope/items"),
])
def test_unknown_ids_are_404_as_openai_sends_them(http, method, path):
    error = openai_error(http.request(method, path), 404)
    assert "not found" in error["message"]


@pytest.mark.parametrize("body, status, param", [
    ({"model": "test-model", "input": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"model": "test-model", "input": "hi", "previous_response_id": "resp_nope"}, 400,
     "previous_response_id"),
    ({"model": "nope", "input": "hi"}, 400, "model"),
])
@pytest.mark.parametrize("streamed", [False, True])
def test_bad_creates_are_openai_errors_before_any_event(http, body, status, param, streamed):
    error = openai_error(http.post("/responses", json={**body, "stream": streamed}), status)
    assert error["param"] == param


@pytest.mark.parametrize("method, path, body, status, param", [
    ("POST", "/responses", b"{not json", 400, None),
    ("POST", "/responses", b'{"input": "hi"}', 400, "model"),
    ("POST", "/responses", b'{"model": "test-model", "input": "hi", "include": ["everything"]}', 400,
     "include[0]"),
    ("GET", "/responses/resp_x/nothing-here", None, 404, None),
    ("PUT", "/responses/resp_x", None, 405, None),
])
def test_bad_requests_and_routes_have_openai_error_bodies(http, method, path, body, status, param):
    sent = http.request(method, path, content=body, headers={"content-type": "application/json"})
    error = openai_error(sent, status)
    assert error["param"] == param


def test_cancelling_a_response_not_in_the_background_is_400(http, fake):
    fake.script(Reply(text="done"))
    done = create(http)
    error = openai_error(http.post(f"/responses/{done['id']}/cancel"), 400)
    assert error["code"] == "response_not_cancellable"


def test_a_response_stored_false_is_404_afterwards(http, fake):
    fake.script(Reply(text="gone"))
    unstored = create(http, store=False)
    assert unstored["store"] is False
    openai_error(http.get(f"/responses/{unstored['id']}"), 404)
    error = openai_error(http.post("/responses", json={"model": "test-model", "input": "more",
                                                       "previous_response_id": unstored["id"]}), 400)
    assert (error["param"], error["code"]) == ("previous_response_id", "previous_response_not_found")


def test_a_model_outage_is_no_error_body_but_a_failed_response(http, fake):
    fake.script(Reply(error_status=503, error_message="overloaded"))
    failed = create(http)  # a 200 whose response failed
    assert (failed["status"], failed["error"]["code"]) == ("failed", "server_error")
    assert "overloaded" in failed["error"]["message"]

