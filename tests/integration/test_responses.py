"""Responses over gRPC against a real agentd on SQLite and PostgreSQL, with the scripted fake
model server as the only fake."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_status import rpc_status

from agentd import codec, paging
from agentd.app import Agentd
from agentd.context import LOCAL_PRINCIPAL
from agentd.engine.responses import engine as response_engine_module
from agentd.errors import Unavailable, details_of, status_of
from agentd.storage import Database, Repository
from agentd.storage.events import EventStore
from agentd.storage.responses import ResponseStore
from agentd.v1 import common_pb2, conversations_pb2_grpc, responses_pb2_grpc
from agentd.v1 import conversations_pb2 as cv
from agentd.v1 import response_events_pb2 as ev
from agentd.v1 import response_items_pb2 as it
from agentd.v1 import response_resource_pb2 as rt
from agentd.v1 import responses_pb2 as pb
from tests.conftest import (
    database_refusing_connections,
    draining,
    error_of,
    fake_model_providers,
    make_settings,
    once_ended,
    running,
)
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.fakes.search_server import FakeSearchServer, Hit, SearchReply

PLAIN_TEXT = ["response.created", "response.in_progress", "response.output_item.added",
              "response.content_part.added", "response.output_text.delta",
              "response.output_text.done", "response.content_part.done", "response.output_item.done",
              "response.completed"]



@pytest_asyncio.fixture
async def server(database_url, tmp_path, fake):
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake),
                             shields=[{"id": "llama-guard", "provider_id": "llama-guard"}])
    async with running(settings) as agentd:
        yield agentd


@pytest_asyncio.fixture
async def responses(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield responses_pb2_grpc.ResponsesServiceStub(channel)


def create(**fields) -> pb.CreateResponseRequest:
    """A create request from the OpenAI JSON (what the SDK sends)."""
    request = pb.CreateResponseRequest()
    codec.from_json({"model": "test-model", "input": "hi", **fields}, request)
    return request


def stream(**fields) -> pb.StreamResponseRequest:
    request = pb.StreamResponseRequest()
    codec.from_json({"model": "test-model", "input": "hi", **fields}, request)
    return request


def tags(events) -> list[str]:
    return [codec.to_json(e)["type"] for e in events]


def output_text(response: rt.Response) -> str:
    return "".join(part.output_text.text for item in response.output if item.HasField("message")
                   for part in item.message.content.parts.parts)


async def collect(call) -> list[ev.ResponseStreamEvent]:
    return [r.event async for r in call]


async def test_a_streamed_response_has_the_openai_event_sequence(responses, fake):
    fake.script(Reply(text="Hello there", chunk_size=6, burst=True,
                      usage={"prompt_tokens": 5, "completion_tokens": 2}))
    events = await collect(responses.StreamResponse(stream(instructions="Be brief.")))
    assert tags(events) == PLAIN_TEXT  # the two chunks came in one read: one delta
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0].created.response, events[-1].completed.response
    assert created.status == rt.RESPONSE_STATUS_IN_PROGRESS and not created.output
    assert events[4].output_text_delta.delta == "Hello there"
    delta = codec.to_json(events[4])
    assert delta["logprobs"] == [] and delta["item_id"].startswith("msg_") and delta["output_index"] == 0
    assert events[5].output_text_done.text == "Hello there"
    assert completed.status == rt.RESPONSE_STATUS_COMPLETED and output_text(completed) == "Hello there"
    assert completed.usage.input_tokens == 5 and completed.usage.output_tokens == 2
    assert completed.usage.total_tokens == 7
    assert completed.instructions == "Be brief." and completed.completed_at > 0
    echoed = codec.to_json(completed)
    assert echoed["tool_choice"] == "auto" and echoed["parallel_tool_calls"] is True
    assert echoed["text"] == {"format": {"type": "text"}, "verbosity": None}
    assert echoed["truncation"] == "disabled" and echoed["store"] is True
    sent = fake.chat_requests[0].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert "response_format" not in sent
    stored = (await responses.GetResponse(pb.GetResponseRequest(response_id=completed.id))).response
    assert stored == completed


async def test_a_unary_response_is_stored_with_its_input(responses, fake):
    fake.script(Reply(text="Unary answer"))
    response = (await responses.CreateResponse(create(
        input=[{"role": "user", "content": "first"}, {"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "second"}]}],
        temperature=0.5, top_p=0.9, metadata={"k": "v"}))).response
    assert response.status == rt.RESPONSE_STATUS_COMPLETED and output_text(response) == "Unary answer"
    assert response.temperature == 0.5 and response.top_p == 0.9 and dict(response.metadata) == {"k": "v"}
    sent = fake.chat_requests[0].body
    assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert [m["content"] for m in sent["messages"]] == ["first", "second"]
    items = await responses.ListResponseInputItems(pb.ListResponseInputItemsRequest(
        response_id=response.id, order=common_pb2.SORT_ORDER_ASC))
    assert [i.message.content.parts.parts[0].input_text.text for i in items.data] == ["first", "second"]
    assert all(i.message.id.startswith("msg_") for i in items.data)
    assert items.first_id == items.data[0].message.id and items.last_id == items.data[1].message.id
    assert not items.has_more


async def test_images_reach_the_model_as_image_url_parts_and_go_again_with_the_chain(responses, fake):
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode()
    first = (await responses.CreateResponse(create(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "compare"},
        {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
        {"type": "input_image", "image_url": png}]}]))).response
    assert first.status == rt.RESPONSE_STATUS_COMPLETED
    sent = fake.chat_requests[0].body["messages"][-1]
    assert sent == {"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": png}}]}
    items = await responses.ListResponseInputItems(pb.ListResponseInputItemsRequest(response_id=first.id))
    assert codec.to_json(items.data[0])["content"][1] == {
        "type": "input_image", "image_url": "https://x/y.png", "detail": "low", "file_id": None}
    await responses.CreateResponse(create(input="and now?", previous_response_id=first.id))
    assert fake.chat_requests[1].body["messages"][0] == sent


async def test_input_items_page_both_ways(responses, fake):
    texts = [f"m{i}" for i in range(5)]
    request = create(input=[{"role": "user", "content": t} for t in texts])
    response = (await responses.CreateResponse(request)).response

    async def page(**fields):
        return await responses.ListResponseInputItems(pb.ListResponseInputItemsRequest(
            response_id=response.id, **fields))

    def text_of(page_):
        return [i.message.content.parts.parts[0].input_text.text for i in page_.data]

    first = await page(page_size=2)  # newest first by default
    assert text_of(first) == ["m4", "m3"] and first.has_more
    second = await page(page_size=2, page_token=first.next_page_token)
    assert text_of(second) == ["m2", "m1"] and second.has_more
    third = await page(page_size=2, page_token=second.next_page_token)
    assert text_of(third) == ["m0"] and not third.has_more and third.next_page_token == ""
    ids = [i.message.id for i in (await page(order=common_pb2.SORT_ORDER_ASC)).data]
    before = await page(order=common_pb2.SORT_ORDER_ASC, page_size=2,
                        page_token=paging.encode(paging.Cursor(before=ids[3])))
    assert text_of(before) == ["m1", "m2"] and before.has_more
    code, _, fields = await error_of(page(page_token=paging.encode(paging.Cursor(after="msg_nope"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["page_token"]


async def test_list_and_delete_responses(responses, fake):
    first = (await responses.CreateResponse(create())).response
    second = (await responses.CreateResponse(create(model="test-model", input="again"))).response
    listed = await responses.ListResponses(pb.ListResponsesRequest())
    assert [r.response.id for r in listed.data] == [second.id, first.id]
    assert listed.first_id == second.id and listed.last_id == first.id and not listed.has_more
    assert listed.data[0].input[0].message.content.parts.parts[0].input_text.text == "again"
    one = await responses.ListResponses(pb.ListResponsesRequest(page_size=1, order=common_pb2.SORT_ORDER_ASC))
    assert [r.response.id for r in one.data] == [first.id] and one.has_more
    rest = await responses.ListResponses(pb.ListResponsesRequest(page_size=1, order=common_pb2.SORT_ORDER_ASC,
                                                                  page_token=one.next_page_token))
    assert [r.response.id for r in rest.data] == [second.id] and not rest.has_more
    assert not (await responses.ListResponses(pb.ListResponsesRequest(model="other"))).data
    deleted = await responses.DeleteResponse(pb.DeleteResponseRequest(response_id=first.id))
    assert deleted.id == first.id and deleted.deleted
    for call in (responses.GetResponse(pb.GetResponseRequest(response_id=first.id)),
                 responses.DeleteResponse(pb.DeleteResponseRequest(response_id=first.id)),
                 responses.ListResponseInputItems(pb.ListResponseInputItemsRequest(response_id=first.id)),
                 responses.CancelResponse(pb.CancelResponseRequest(response_id=first.id))):
        assert (await error_of(call))[:2] == (grpc.StatusCode.NOT_FOUND, "RESPONSE_NOT_FOUND")


# ------------------------------------------------------------------ function tools

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}}}


# Interleaved pieces of two calls, or every piece in one read (then each call's name and
# arguments come as one piece: its item is added, then one arguments delta).
@pytest.mark.parametrize("arrival", [{"interleave_tool_calls": True}, {"burst": True}])
async def test_parallel_function_calls_are_items_of_their_own_and_end_the_response(responses, fake, arrival):
    fake.script(Reply(text="Let me check.", tool_calls=[
        ToolCallSpec("get_weather", {"city": "Paris"}, id="call_1"),
        ToolCallSpec("get_weather", {"city": "Rome"}, id="call_2")],
        chunk_size=5, **arrival))
    events = await collect(responses.StreamResponse(stream(tools=[WEATHER])))
    done = [e.output_item_done for e in events if e.HasField("output_item_done")]
    assert [d.output_index for d in done] == [0, 1, 2]
    sent = fake.chat_requests[0].body["tools"][0]["function"]["parameters"]  # as written: 20, not 20.0
    assert repr(sent["properties"]["city"]["maxLength"]) == "20"
    assert done[0].item.message.content.parts.parts[0].output_text.text == "Let me check."
    calls = [d.item.function_call for d in done[1:]]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_1", "get_weather", {"city": "Paris"}), ("call_2", "get_weather", {"city": "Rome"})]
    assert all(c.id.startswith("fc_") and c.status == it.RESPONSE_ITEM_STATUS_COMPLETED for c in calls)
    for call, index in zip(calls, (1, 2), strict=True):
        deltas = [e.function_call_arguments_delta for e in events
                  if e.HasField("function_call_arguments_delta")
                  and e.function_call_arguments_delta.item_id == call.id]
        assert {d.output_index for d in deltas} == {index}
        assert "".join(d.delta for d in deltas) == call.arguments
        assert len(deltas) > 1 if "interleave_tool_calls" in arrival else len(deltas) == 1
        (arguments_done,) = [e.function_call_arguments_done for e in events
                             if e.HasField("function_call_arguments_done")
                             and e.function_call_arguments_done.item_id == call.id]
        assert arguments_done.arguments == call.arguments and arguments_done.output_index == index
    added = [e.output_item_added for e in events if e.HasField("output_item_added")]
    assert [a.item.WhichOneof("item") for a in added] == ["message", "function_call", "function_call"]
    assert added[1].item.function_call.arguments == "" and added[1].item.function_call.status == \
        it.RESPONSE_ITEM_STATUS_IN_PROGRESS
    assert events[-1].completed.response.status == rt.RESPONSE_STATUS_COMPLETED
    assert len(fake.chat_requests) == 1
    sent = fake.chat_requests[0].body
    assert sent["tools"][0]["function"]["name"] == "get_weather" and "parallel_tool_calls" not in sent


async def test_function_call_outputs_continue_with_previous_response_id(responses, fake):
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="call_1"),
                                  ToolCallSpec("get_weather", {"city": "Rome"}, id="call_2")]),
                Reply(text="Sunny in both."))
    first = (await responses.CreateResponse(create(tools=[WEATHER], parallel_tool_calls=True))).response
    assert [o.function_call.call_id for o in first.output] == ["call_1", "call_2"]
    second = (await responses.CreateResponse(create(
        previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
               {"type": "function_call_output", "call_id": "call_2", "output": "sunny too"}]))).response
    assert output_text(second) == "Sunny in both." and second.previous_response_id == first.id
    messages = fake.chat_requests[1].body["messages"]
    assert messages[0] == {"role": "user", "content": "hi"}
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_1", "call_2"]
    assert messages[2:] == [{"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
                            {"role": "tool", "content": "sunny too", "tool_call_id": "call_2"}]
    assert fake.chat_requests[0].body["parallel_tool_calls"] is True
    # The chain goes on: the third response sees the whole transcript.
    fake.script(Reply(text="You asked about the weather."))
    third = (await responses.CreateResponse(create(previous_response_id=second.id, input="what?"))).response
    assert [m["role"] for m in fake.chat_requests[2].body["messages"]] == [
        "user", "assistant", "tool", "tool", "assistant", "user"]
    own = await responses.ListResponseInputItems(pb.ListResponseInputItemsRequest(response_id=third.id))
    assert len(own.data) == 1  # its own input only


async def test_function_calls_left_without_their_output_are_invalid_as_openai_has_it(responses, fake):
    """OpenAI checks that every function call has its output before it runs a model; a
    model server would refuse the chat messages (a failed response) or, if lenient, answer
    a conversation with a hole in it."""
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="call_1"),
                                  ToolCallSpec("get_weather", {"city": "Rome"}, id="call_2")]))
    first = (await responses.CreateResponse(create(tools=[WEATHER], parallel_tool_calls=True))).response
    one_output = [{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    for given, missing in ((one_output, "call_2"), ("and now?", "call_1")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await responses.CreateResponse(create(previous_response_id=first.id, tools=[WEATHER],
                                                  input=given))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == f"input: No tool output found for function call {missing}."
    assert len(fake.chat_requests) == 1
    assert len((await responses.ListResponses(pb.ListResponsesRequest())).data) == 1  # nothing stored


async def test_the_transcript_cache_keeps_no_more_items_than_its_bound(database_url, tmp_path, fake,
                                                                        monkeypatch):
    """Each cached transcript holds its whole chain: the cache is bounded by the items it
    holds, and a chain whose transcripts left it is read back from the store."""
    monkeypatch.setattr(response_engine_module, "TRANSCRIPT_CACHE_ITEMS", 7)
    fake.script(*(Reply(text=f"a{i}") for i in range(1, 5)))
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake))
    async with running(settings) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        responses = responses_pb2_grpc.ResponsesServiceStub(channel)
        previous, held = {}, []
        for i in range(1, 5):
            response = (await responses.CreateResponse(create(input=f"u{i}", **previous))).response
            previous = {"previous_response_id": response.id}
            held.append((len(server.responses._transcripts), server.responses._transcripts.weight))
    # Two items a response, its chain's before them: 2, then 2 + 4, then 6 + 6 is past 7.
    assert held[:3] == [(1, 2), (2, 6), (1, 6)]
    assert [m["content"] for m in fake.chat_requests[3].body["messages"]] == [
        "u1", "a1", "u2", "a2", "u3", "a3", "u4"]


async def test_function_call_outputs_continue_with_the_calls_resent(responses, fake):
    fake.script(Reply(text="It is sunny."))
    response = (await responses.CreateResponse(create(tools=[WEATHER], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}]))).response
    assert output_text(response) == "It is sunny."
    messages = fake.chat_requests[0].body["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_9"}


@pytest.mark.parametrize("fields, param", [
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]"),
    ({"tools": [WEATHER, {"type": "mcp", "server_label": "s", "server_url": "http://127.0.0.1:9/mcp"}]},
     "tools[1]"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"temperature": 3}, "temperature"),
    ({"max_output_tokens": 3}, "max_output_tokens"),
    ({"include": ["nonsense"]}, "include[0]"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
    ({"conversation": "chat_1"}, "conversation"),
    ({"background": True, "store": False}, "background"),
    ({"previous_response_id": "resp_\u0000"}, "previous_response_id"),
    ({"conversation": {"id": "conv_\u0000"}}, "conversation"),
    # Images a model can be sent are URLs (http(s) or data:) in user messages; no files yet.
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x/y.png"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,%%%"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "system", "content": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": [
                    {"type": "input_text", "text": "see"},
                    {"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[1].output[1]"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"role": "user", "content": "and?"}]}, "input"),
    # Content parts of the other side's kind, as OpenAI refuses them.
    ({"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "a"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "a"}]}]},
     "input[0].content[0].type"),
    ({"tools": [{"type": "function", "name": "get weather"}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f" * 65}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]}, "tools[0].parameters"),
])
async def test_bad_requests_fail_before_any_event(responses, fake, fields, param):
    for call in (responses.CreateResponse(create(**fields)),
                 collect(responses.StreamResponse(stream(**fields)))):
        code, reason, violations = await error_of(call)
        assert (code, reason, violations) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", [param])
    assert not fake.chat_requests
    assert not (await responses.ListResponses(pb.ListResponsesRequest())).data


@pytest.mark.parametrize("fields, reason, param", [
    ({"conversation": "conv_nope"}, "CONVERSATION_NOT_FOUND", "conversation"),
    ({"guardrails": ["llama-guard", {"type": "no-such-shield"}]}, "SHIELD_NOT_FOUND", "guardrails"),
])
async def test_unknown_references_are_not_found_before_any_event(responses, fake, fields, reason, param):
    for call in (responses.CreateResponse(create(**fields)),
                 collect(responses.StreamResponse(stream(**fields)))):
        assert await error_of(call) == (grpc.StatusCode.NOT_FOUND, reason, [param])
    assert not fake.chat_requests


@pytest.mark.parametrize("fields, reason, param", [
    ({"model": "nope"}, "MODEL_NOT_FOUND", "model"),
    ({"previous_response_id": "resp_nope"}, "PREVIOUS_RESPONSE_NOT_FOUND", "previous_response_id"),
])
async def test_an_unknown_model_or_previous_response_is_invalid_as_openai_has_it(responses, fake, fields,
                                                                                 reason, param):
    for call in (responses.CreateResponse(create(**fields)),
                 collect(responses.StreamResponse(stream(**fields)))):
        assert await error_of(call) == (grpc.StatusCode.INVALID_ARGUMENT, reason, [param])
    assert not fake.chat_requests


async def test_configured_guardrails_are_accepted(responses, fake):
    fake.script(Reply(text="Safe."))
    response = (await responses.CreateResponse(create(guardrails=["llama-guard"]))).response
    assert output_text(response) == "Safe."


# ------------------------------------------------------------------ conversations, store


async def test_a_conversation_gives_its_items_and_gets_the_new_ones(server, responses, fake):
    conversations = server.responses.conversations
    conversation = await conversations.create(LOCAL_PRINCIPAL, cv.Conversation(id="conv_test1"), [
        codec.parse({"type": "message", "id": f"msg_{i}", "role": "user", "content": f"old {i}"},
                    it.ResponseItem)
        for i in range(25)])  # more than Llama Stack's 20-item cap
    fake.script(Reply(text="Noted."), Reply(text="Streamed."))
    response = (await responses.CreateResponse(create(conversation=conversation.id, input="new"))).response
    assert response.conversation.id == conversation.id and output_text(response) == "Noted."
    sent = [m["content"] for m in fake.chat_requests[0].body["messages"]]
    assert sent == [f"old {i}" for i in range(25)] + ["new"]
    events = await collect(responses.StreamResponse(stream(conversation={"id": conversation.id}, input="more",
                                                           store=False)))
    assert events[-1].completed.response.conversation.id == conversation.id
    assert [m["content"] for m in fake.chat_requests[1].body["messages"]][-3:] == ["new", "Noted.", "more"]
    items, _ = await conversations.list_items(LOCAL_PRINCIPAL, conversation.id, paging.Cursor(), 100,
                                              descending=False)
    texts = [codec.to_json(i)["content"][0]["text"] for i in items[25:]]
    assert texts == ["new", "Noted.", "more", "Streamed."]
    # store=false: synced to the conversation, never retrievable.
    unstored = events[-1].completed.response.id
    assert (await error_of(responses.GetResponse(pb.GetResponseRequest(response_id=unstored))))[1] == \
        "RESPONSE_NOT_FOUND"
    _, reason, _ = await error_of(responses.CreateResponse(create(previous_response_id=unstored)))
    assert reason == "PREVIOUS_RESPONSE_NOT_FOUND"
    listed = await responses.ListResponses(pb.ListResponsesRequest())
    assert [r.response.id for r in listed.data] == [response.id]


async def test_a_conversation_runs_one_response_at_a_time(server, responses, fake):
    """The next response of a conversation reads the items the running one adds when it
    ends: while one runs, another is refused (OpenAI's conversation_locked), over every
    replica (a unique index), stored or not, and nothing of it is stored."""
    conversations = server.responses.conversations
    conversation = await conversations.create(LOCAL_PRINCIPAL, cv.Conversation(id="conv_one"), [])
    fake.script(Reply(text="slow", hang=True))
    running = (await responses.CreateResponse(create(conversation=conversation.id, background=True))).response
    await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
    for call in (responses.CreateResponse(create(conversation=conversation.id, input="too")),
                 collect(responses.StreamResponse(stream(conversation=conversation.id, store=False)))):
        assert await error_of(call) == (grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_LOCKED", [])
    other = await conversations.create(LOCAL_PRINCIPAL, cv.Conversation(id="conv_two"), [])
    fake.script(Reply(text="elsewhere"))
    elsewhere = (await responses.CreateResponse(create(conversation=other.id))).response
    assert output_text(elsewhere) == "elsewhere"
    await responses.CancelResponse(pb.CancelResponseRequest(response_id=running.id))
    fake.script(Reply(text="now"))
    after = (await responses.CreateResponse(create(conversation=conversation.id, input="now?"))).response
    assert output_text(after) == "now"
    listed = await responses.ListResponses(pb.ListResponsesRequest())
    assert {r.response.id for r in listed.data} == {running.id, elsewhere.id, after.id}


async def test_chaining_off_a_running_response_waits_for_its_end(server, responses, fake):
    """Its output is not there yet: the model would get its input alone."""
    fake.script(Reply(text="slow", hang=True))
    running = (await responses.CreateResponse(create(background=True))).response
    await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
    code, reason, fields = await error_of(responses.CreateResponse(create(previous_response_id=running.id)))
    assert (code, reason, fields) == (
        grpc.StatusCode.FAILED_PRECONDITION, "PREVIOUS_RESPONSE_RUNNING", ["previous_response_id"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
        refused = await http.post("/v1/responses", json={"model": "test-model", "input": "next",
                                                         "previous_response_id": running.id})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "previous_response_running"
    assert refused.json()["error"]["param"] == "previous_response_id"
    assert len(fake.chat_requests) == 1
    await responses.CancelResponse(pb.CancelResponseRequest(response_id=running.id))
    fake.script(Reply(text="after"))
    after = (await responses.CreateResponse(create(input="next", previous_response_id=running.id))).response
    assert output_text(after) == "after"


@pytest.mark.parametrize("store", [True, False])
async def test_deleting_a_conversation_cancels_its_running_response(server, responses, fake, store):
    """Rather than run on to the end and then fail, as a server_error, to add its items;
    store=false too (which no CancelResponse can name)."""
    conversations = server.responses.conversations
    conversation = await conversations.create(LOCAL_PRINCIPAL, cv.Conversation(id="conv_gone"), [])
    fake.script(Reply(text="slow", hang=True))
    call = responses.StreamResponse(stream(conversation=conversation.id, store=store))
    events = []
    async for reply in call:
        events.append(reply.event)
        if reply.event.HasField("in_progress"):
            break
    await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = conversations_pb2_grpc.ConversationsServiceStub(channel)
        deleted = await stub.DeleteConversation(cv.DeleteConversationRequest(conversation_id=conversation.id))
    assert deleted.deleted
    events += [reply.event async for reply in call]
    assert events[-1].failed.response.status == rt.RESPONSE_STATUS_CANCELLED
    if store:
        got = await responses.GetResponse(pb.GetResponseRequest(response_id=events[0].created.response.id))
        assert got.response.status == rt.RESPONSE_STATUS_CANCELLED
    code, reason, _ = await error_of(responses.CreateResponse(create(conversation=conversation.id)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")


async def test_a_retry_of_the_running_response_of_a_conversation_is_answered_not_locked_out(
        server, responses, fake):
    """The retry meets both the request_id key and the conversation's one-running index; the
    database may check the index first: the answer is still the first call's response."""
    conversation = await server.responses.conversations.create(LOCAL_PRINCIPAL, cv.Conversation(id="conv_r"),
                                                               [])
    fake.script(Reply(text="slow", hang=True))
    fields = {"conversation": conversation.id, "background": True, "request_id": "retry-1"}
    first = (await responses.CreateResponse(create(**fields))).response
    await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
    again = (await responses.CreateResponse(create(**fields))).response
    assert again.id == first.id and len(fake.chat_requests) == 1
    await responses.CancelResponse(pb.CancelResponseRequest(response_id=first.id))


@pytest.mark.parametrize("content, problem", [
    ([{"type": "input_text", "text": "read this"}, {"type": "input_file", "file_id": "file_1"}],
     "input_file"),
    ([{"type": "input_image", "file_id": "file_1"}], "file_id"),
])
async def test_a_conversation_item_no_model_can_be_sent_fails_the_response_naming_it(
        server, responses, fake, content, problem):
    # OpenAI's conversations take such items; agentd stores them, but cannot send them yet:
    # left out, the model would answer as if it had seen them.
    conversation = await server.responses.conversations.create(
        LOCAL_PRINCIPAL, cv.Conversation(id="conv_files"),
        [codec.parse({"type": "message", "id": "msg_file", "role": "user", "content": content},
                     it.ResponseItem)])
    for call in (responses.CreateResponse(create(conversation=conversation.id, input="and?")),
                 collect(responses.StreamResponse(stream(conversation=conversation.id, input="and?")))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details_of(rpc_status.from_call(caught.value))[1] == ["conversation"]
        assert "item 'msg_file' cannot be sent to a model" in caught.value.details()
        assert problem in caught.value.details()
    assert not fake.chat_requests


async def test_store_false_leaves_nothing_behind(server, responses, fake):
    response = (await responses.CreateResponse(create(store=False))).response
    assert response.status == rt.RESPONSE_STATUS_COMPLETED and not response.store
    for _ in range(100):  # its row goes when its run has ended
        if await server.responses.store.get(LOCAL_PRINCIPAL, response.id) is None:
            break
        await asyncio.sleep(0.01)
    assert await server.responses.store.get(LOCAL_PRINCIPAL, response.id) is None


# ------------------------------------------------------------------ background, cancel, limits


async def follow(responses, response_id: str) -> list[ev.ResponseStreamEvent]:
    request = pb.StreamResponseEventsRequest(response_id=response_id)
    return await collect(responses.StreamResponseEvents(request))


async def wait_for_status(responses, response_id: str, *statuses) -> rt.Response:
    for _ in range(500):
        response = (await responses.GetResponse(pb.GetResponseRequest(response_id=response_id))).response
        if response.status in statuses:
            return response
        await asyncio.sleep(0.01)
    raise AssertionError(f"{response_id} never reached {statuses}: {response.status}")


async def test_background_returns_at_once_and_can_be_polled_and_followed(responses, fake):
    fake.script(Reply(text="one two three four", chunk_size=4, chunk_delay=0.02))
    created = (await responses.CreateResponse(create(background=True))).response
    assert created.status == rt.RESPONSE_STATUS_QUEUED and created.background
    done = await wait_for_status(responses, created.id, rt.RESPONSE_STATUS_COMPLETED)
    assert output_text(done) == "one two three four"
    events = await follow(responses, created.id)
    assert events[0].created.response.status == rt.RESPONSE_STATUS_QUEUED
    assert events[1].queued.response.status == rt.RESPONSE_STATUS_QUEUED
    assert events[2].in_progress.response.status == rt.RESPONSE_STATUS_IN_PROGRESS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].completed.response == done
    later = await collect(responses.StreamResponseEvents(pb.StreamResponseEventsRequest(
        response_id=created.id, starting_after=events[-3].sequence_number)))
    assert later == events[-2:]


async def test_a_re_attach_before_minus_one_is_invalid_and_minus_one_replays_all(responses, fake, server):
    fake.script(Reply(text="one two"))
    done = (await responses.CreateResponse(create())).response
    code, reason, fields = await error_of(collect(responses.StreamResponseEvents(
        pb.StreamResponseEventsRequest(response_id=done.id, starting_after=-2))))
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["starting_after"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
        refused = await http.get(f"/v1/responses/{done.id}", params={"stream": "true", "starting_after": -5})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "starting_after"
    assert "-1 or more, got -5" in refused.json()["error"]["message"]
    every = await collect(responses.StreamResponseEvents(
        pb.StreamResponseEventsRequest(response_id=done.id, starting_after=-1)))
    assert every == await follow(responses, done.id)
    assert every[-1].completed.response == done


async def test_a_background_stream_dropped_midway_is_re_attached_without_gaps(responses, fake):
    fake.script(Reply(text="abcdefghij", chunk_size=1, chunk_delay=0.02))
    call = responses.StreamResponse(stream(background=True))
    seen = []
    async for reply in call:
        seen.append(reply.event)
        if len(seen) == 5:
            break
    call.cancel()
    rest = await collect(responses.StreamResponseEvents(pb.StreamResponseEventsRequest(
        response_id=seen[0].created.response.id, starting_after=seen[-1].sequence_number)))
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].completed.response.status == rt.RESPONSE_STATUS_COMPLETED
    assert "".join(e.output_text_delta.delta for e in events) == "abcdefghij"


async def test_cancel_stops_a_background_response(responses, fake):
    fake.script(Reply(text="never", hang=True))
    created = (await responses.CreateResponse(create(background=True))).response
    await wait_for_status(responses, created.id, rt.RESPONSE_STATUS_IN_PROGRESS)
    # The model has the request (and its hanging reply), so the next request gets the next reply.
    await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
    cancelled = (await responses.CancelResponse(pb.CancelResponseRequest(response_id=created.id))).response
    assert cancelled.status == rt.RESPONSE_STATUS_CANCELLED and not cancelled.HasField("error")
    assert (await responses.GetResponse(pb.GetResponseRequest(response_id=created.id))).response == cancelled
    events = await follow(responses, created.id)
    assert events[-1].failed.response.status == rt.RESPONSE_STATUS_CANCELLED
    again = await responses.CancelResponse(pb.CancelResponseRequest(response_id=created.id))
    assert again.response.status == rt.RESPONSE_STATUS_CANCELLED
    fake.script(Reply(text="done"))
    finished = (await responses.CreateResponse(create())).response
    code, reason, _ = await error_of(responses.CancelResponse(
        pb.CancelResponseRequest(response_id=finished.id)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESPONSE_NOT_CANCELLABLE")


async def test_deleting_a_running_response_cancels_it_first(server, responses, fake):
    fake.script(Reply(text="never", hang=True))
    created = (await responses.CreateResponse(create(background=True))).response
    await wait_for_status(responses, created.id, rt.RESPONSE_STATUS_IN_PROGRESS)
    await responses.DeleteResponse(pb.DeleteResponseRequest(response_id=created.id))
    assert server.runs.get(LOCAL_PRINCIPAL, created.id) is None
    code, reason, _ = await error_of(responses.GetResponse(pb.GetResponseRequest(response_id=created.id)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESPONSE_NOT_FOUND")


async def test_a_dropped_stream_stops_its_response(responses, fake):
    fake.script(Reply(text="never", hang=True))
    call = responses.StreamResponse(stream())
    async for reply in call:
        response_id = reply.event.created.response.id
        break
    call.cancel()
    stopped = await wait_for_status(responses, response_id, rt.RESPONSE_STATUS_CANCELLED)
    assert not stopped.HasField("error")


async def test_max_output_tokens_makes_the_response_incomplete(responses, fake):
    fake.script(Reply(text="cut short", finish_reason="length"))
    events = await collect(responses.StreamResponse(stream(max_output_tokens=16)))
    assert tags(events)[-1] == "response.incomplete"
    response = events[-1].incomplete.response
    assert response.status == rt.RESPONSE_STATUS_INCOMPLETE and response.max_output_tokens == 16
    assert codec.to_json(response)["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response.output[0].message.status == it.RESPONSE_ITEM_STATUS_INCOMPLETE
    assert fake.chat_requests[0].body["max_tokens"] == 16
    stored = (await responses.GetResponse(pb.GetResponseRequest(response_id=response.id))).response
    assert stored == response


# ------------------------------------------------------------------ formats, echoes, failures


async def test_text_formats_are_forwarded_and_echoed(responses, fake):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"]}
    fake.script(Reply(text='{"city": "Paris"}'), Reply(text="{}"))
    text = {"format": {"type": "json_schema", "name": "City", "schema": schema, "strict": True}}
    request = create(text=text, max_infer_iters=3, user="u1", tool_choice="none", parallel_tool_calls=False)
    response = (await responses.CreateResponse(request)).response
    assert fake.chat_requests[0].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "City", "schema": schema, "strict": True}}
    # The schema goes as the client wrote it: 20, not the 20.0 a protobuf Struct holds.
    sent = fake.chat_requests[0].body["response_format"]["json_schema"]["schema"]
    assert repr(sent["properties"]["city"]["maxLength"]) == "20"
    echoed = codec.to_json(response)
    assert repr(echoed["text"]["format"]["schema"]["properties"]["city"]["maxLength"]) == "20"
    assert echoed["text"]["format"] == {"type": "json_schema", "name": "City", "schema": schema,
                                        "description": None, "strict": True}
    assert echoed["max_infer_iters"] == 3 and echoed["user"] == "u1" and echoed["tool_choice"] == "none"
    assert echoed["parallel_tool_calls"] is False
    await responses.CreateResponse(create(text={"format": {"type": "json_object"}}))
    assert fake.chat_requests[1].body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("status, code", [(500, "server_error"), (400, "invalid_prompt"),
                                          (429, "rate_limit_exceeded")])
async def test_a_model_failure_ends_with_response_failed_and_is_stored(responses, fake, status, code):
    fake.script(Reply(error_status=status, error_message="upstream says no"))
    events = await collect(responses.StreamResponse(stream()))
    assert tags(events) == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1].failed.response
    assert failed.status == rt.RESPONSE_STATUS_FAILED and failed.error.code == code
    assert "upstream says no" in failed.error.message
    stored = (await responses.GetResponse(pb.GetResponseRequest(response_id=failed.id))).response
    assert stored == failed
    fake.script(Reply(error_status=status, error_message="again"))
    unary = (await responses.CreateResponse(create())).response
    assert unary.status == rt.RESPONSE_STATUS_FAILED and unary.error.code == code


async def test_a_request_json_cannot_carry_fails_as_invalid_prompt_not_as_a_server_error(responses, fake):
    """A gRPC client can put infinity in a Struct (a function's parameters); the model
    request cannot carry it: the request's fault."""
    tool = {**WEATHER, "parameters": {"type": "object", "properties": {"n": {"maximum": math.inf}}}}
    failed = (await responses.CreateResponse(create(tools=[tool]))).response
    assert failed.status == rt.RESPONSE_STATUS_FAILED and failed.error.code == "invalid_prompt"
    assert "cannot be sent as JSON" in failed.error.message and not fake.chat_requests


async def test_a_retried_create_with_the_same_request_id_runs_once(responses, fake):
    fake.script(Reply(text="once"))
    first = (await responses.CreateResponse(create(request_id="key-1"))).response
    again = (await responses.CreateResponse(create(request_id="key-1"))).response
    assert again == first and len(fake.chat_requests) == 1
    replayed = await collect(responses.StreamResponse(stream(request_id="key-1")))
    assert replayed[-1].completed.response == first and len(fake.chat_requests) == 1


# ------------------------------------------------------------------ web search (server-side)


async def test_a_unary_response_over_rest_stops_when_its_client_goes_away(server, responses, fake):
    fake.script(Reply(text="never", hang=True))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/responses", json={"model": "test-model", "input": "hi"}, timeout=0.5)
    for _ in range(100):  # as a dropped stream's response: cancelled, not left running
        listed = (await responses.ListResponses(pb.ListResponsesRequest())).data
        if listed and listed[0].response.status != rt.RESPONSE_STATUS_IN_PROGRESS:
            break
        await asyncio.sleep(0.05)
    assert [r.response.status for r in listed] == [rt.RESPONSE_STATUS_CANCELLED]


@pytest.fixture
def search():
    with FakeSearchServer() as server:
        yield server


@pytest_asyncio.fixture
async def searching(database_url, tmp_path, fake, search):
    """ResponsesService of an agentd with web search configured (the fake search API)."""
    settings = make_settings(database_url, tmp_path, providers=fake_model_providers(fake),
                             websearch={"api_key": "sk-search", "base_url": search.base_url})
    async with running(settings) as agentd, \
            grpc.aio.insecure_channel(f"127.0.0.1:{agentd.grpc_port}") as channel:
        yield responses_pb2_grpc.ResponsesServiceStub(channel)


def searches(*queries: str, **reply) -> Reply:
    calls = [ToolCallSpec("web_search", {"query": q}, id=f"call_{q}") for q in queries]
    return Reply(tool_calls=calls, **reply)


async def test_web_search_runs_here_and_the_model_answers(searching, fake, search):
    search.script(SearchReply(results=[Hit("agentd", "https://agentd.example", "agentd runs agents")]))
    fake.script(searches("agentd", usage={"prompt_tokens": 10, "completion_tokens": 3}),
                Reply(text="agentd runs agents.", burst=True,
                      usage={"prompt_tokens": 20, "completion_tokens": 5}))
    events = await collect(searching.StreamResponse(stream(tools=[{"type": "web_search_preview"}])))
    assert tags(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.web_search_call.in_progress", "response.web_search_call.searching",
        "response.web_search_call.completed", "response.output_item.done",
        *PLAIN_TEXT[2:]]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    response = events[-1].completed.response
    call = response.output[0].web_search_call
    assert call.id.startswith("ws_") and call.status == it.RESPONSE_ITEM_STATUS_COMPLETED
    assert call.action.search.query == "agentd"
    assert output_text(response) == "agentd runs agents." and response.output[1].HasField("message")
    usage = response.usage  # summed over both model calls
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (30, 8, 38)
    assert search.requests[0].body["query"] == "agentd"
    assert fake.chat_requests[0].body["tools"][0]["function"]["name"] == "web_search"
    second = fake.chat_requests[1].body["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "call_agentd"
    assert second[-1]["role"] == "tool" and "agentd runs agents" in second[-1]["content"]


async def test_max_infer_iters_ends_a_searching_response_incomplete(searching, fake, search):
    fake.script(searches("a"), searches("b"), Reply(text="never asked"))
    response = (await searching.CreateResponse(create(tools=[{"type": "web_search"}],
                                                      max_infer_iters=2))).response
    assert response.status == rt.RESPONSE_STATUS_INCOMPLETE
    assert codec.to_json(response)["incomplete_details"] == {"reason": "max_infer_iters"}
    assert [o.web_search_call.action.search.query for o in response.output] == ["a", "b"]
    assert len(fake.chat_requests) == 2


async def test_max_tool_calls_stops_running_searches(searching, fake, search):
    fake.script(searches("a", "b"), Reply(text="with one result"))
    response = (await searching.CreateResponse(create(tools=[{"type": "web_search"}],
                                                      max_tool_calls=1))).response
    assert output_text(response) == "with one result" and response.max_tool_calls == 1
    assert [o.WhichOneof("item") for o in response.output] == ["web_search_call", "message"]
    assert len(search.requests) == 1
    tool_messages = [m for m in fake.chat_requests[1].body["messages"] if m["role"] == "tool"]
    assert "max_tool_calls" in tool_messages[1]["content"]


async def test_a_failed_search_is_a_failed_item_and_the_model_goes_on(searching, fake, search):
    search.script(SearchReply(status=500))
    fake.script(searches("x"), Reply(text="The search failed."))
    response = (await searching.CreateResponse(create(tools=[{"type": "web_search"}, WEATHER]))).response
    assert response.output[0].web_search_call.status == it.RESPONSE_ITEM_STATUS_FAILED
    assert output_text(response) == "The search failed."


async def test_responses_left_running_by_a_crash_are_failed_at_the_next_start(database_url, tmp_path):
    db = Database(database_url)
    await db.migrate()
    store = ResponseStore(Repository(db))
    # Left mid-call: the crashed process had kept its first two events, and the function
    # call it was streaming is still in progress.
    streaming = it.ResponseFunctionCall(id="fc_1", call_id="call_1", name="f",
                                        status=it.RESPONSE_ITEM_STATUS_IN_PROGRESS)
    left = rt.Response(id="resp_left", model="test-model", status=rt.RESPONSE_STATUS_IN_PROGRESS, store=True,
                       output=[it.ResponseItem(function_call=streaming)])
    queued = rt.Response(id="resp_queued", model="test-model", status=rt.RESPONSE_STATUS_QUEUED, store=True)
    done = rt.Response(id="resp_done", model="test-model", status=rt.RESPONSE_STATUS_COMPLETED, store=True)
    unstored = rt.Response(id="resp_unstored", model="test-model", status=rt.RESPONSE_STATUS_IN_PROGRESS,
                           store=False)
    for response in (left, queued, done, unstored):
        await store.create(LOCAL_PRINCIPAL, response, [])
    kept = [ev.ResponseStreamEvent(sequence_number=0, created=ev.ResponseLifecycleEvent(response=left)),
            ev.ResponseStreamEvent(sequence_number=1, in_progress=ev.ResponseLifecycleEvent(response=left))]
    await EventStore(Repository(db)).append(LOCAL_PRINCIPAL, "resp_left",
                                            [(e.sequence_number, e.SerializeToString()) for e in kept])
    await db.close()
    async with running(make_settings(database_url, tmp_path)) as agentd, \
            grpc.aio.insecure_channel(f"127.0.0.1:{agentd.grpc_port}") as channel:
        responses = responses_pb2_grpc.ResponsesServiceStub(channel)
        for response_id, before in (("resp_left", kept), ("resp_queued", [])):
            failed = (await responses.GetResponse(pb.GetResponseRequest(response_id=response_id))).response
            assert failed.status == rt.RESPONSE_STATUS_FAILED and failed.error.code == "server_error"
            assert failed.error.message == "The server stopped while the response ran; create it again."
            assert await agentd.responses.store.status(LOCAL_PRINCIPAL, response_id) == "failed"
            # A follower gets the kept events, then response.failed numbered next (as a shutdown
            # would have ended it), not a stream that just stops.
            async with asyncio.timeout(30):
                events = await collect(responses.StreamResponseEvents(
                    pb.StreamResponseEventsRequest(response_id=response_id)))
            assert events[:-1] == before
            assert events[-1].HasField("failed") and events[-1].sequence_number == len(before)
            assert events[-1].failed.response == failed
        # What was still streaming stays unfinished.
        ended = await agentd.responses.get(LOCAL_PRINCIPAL, "resp_left")
        assert ended.output[0].function_call.status == it.RESPONSE_ITEM_STATUS_INCOMPLETE
        still = await agentd.responses.get(LOCAL_PRINCIPAL, "resp_done")
        assert still.status == rt.RESPONSE_STATUS_COMPLETED
        assert await agentd.runs.store.last_sequence(LOCAL_PRINCIPAL, "resp_done") == -1  # left alone
        # A store=false one was never retrievable: it is deleted.
        assert await agentd.responses.store.get(LOCAL_PRINCIPAL, "resp_unstored") is None


async def test_two_replicas_recovering_a_response_at_once_keep_one_response_failed(database_url, tmp_path):
    async with running(make_settings(database_url, tmp_path)) as first, \
            running(make_settings(database_url, tmp_path)) as second:
        # Left by a crash (rows as a dead process leaves them), found by both at once.
        left = rt.Response(id="resp_left", model="test-model", status=rt.RESPONSE_STATUS_IN_PROGRESS,
                           store=True)
        await first.responses.store.create(LOCAL_PRINCIPAL, left, [])
        counts = await asyncio.gather(first.responses.recover(), second.responses.recover())
        assert sorted(counts) == [0, 1]
        kept = await first.runs.store.read_after(LOCAL_PRINCIPAL, "resp_left", -1, 10)
        assert len(kept) == 1 and ev.ResponseStreamEvent.FromString(kept[0][1]).HasField("failed")


async def test_a_create_while_the_server_drains_fails_before_writing_anything(database_url, tmp_path, fake):
    server = Agentd(make_settings(database_url, tmp_path, providers=fake_model_providers(fake)))
    await server.start()
    async with draining(server):
        for request in (create(), stream(), create(store=False), create(background=True)):
            with pytest.raises(Unavailable) as refused:
                await server.responses.start(LOCAL_PRINCIPAL, request)
            assert refused.value.reason == "SHUTTING_DOWN"
            assert status_of(refused.value).code == grpc.StatusCode.UNAVAILABLE.value[0]
        listed, _ = await server.responses.store.list(LOCAL_PRINCIPAL, paging.Cursor(), 10)
        assert listed == []  # not even a store=false row
    assert not fake.chat_requests


async def test_a_store_false_response_interrupted_by_shutdown_leaves_no_row(database_url, tmp_path, fake):
    fake.script(Reply(text="never", hang=True))
    server = Agentd(make_settings(database_url, tmp_path, providers=fake_model_providers(fake)))
    await server.start()
    try:
        started = await server.responses.start(LOCAL_PRINCIPAL, stream(store=False))
        owner_stream = asyncio.create_task(collect_events(started.events()))
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        assert await server.responses.store.get(LOCAL_PRINCIPAL, started.response.id) is not None
    finally:
        await server.stop(0.1)
    events = await owner_stream
    assert events[-1].failed.response.error.code == "server_error"  # interrupted
    db = Database(database_url)
    try:
        assert await ResponseStore(Repository(db)).get(LOCAL_PRINCIPAL, started.response.id) is None
    finally:
        await db.close()


async def collect_events(events) -> list[ev.ResponseStreamEvent]:
    async with contextlib.aclosing(events):
        return [event async for event in events]


async def test_a_response_whose_end_cannot_be_stored_still_ends_its_stream_failed(
        responses, fake, database_url, caplog):
    """The database goes away mid-response: the run fails, its end cannot be stored, and its
    stream still ends with response.failed (it ended OK after a delta, with no end at all).
    A lost database is no bug: logged in lines without tracebacks."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connections can be refused from outside; an SQLite file cannot")
    fake.script(Reply(text="abcdefghij", chunk_size=1, chunk_delay=0.1, disconnect_after_chunks=6))
    call = responses.StreamResponse(stream())
    reader = aiter(call)
    seen = [(await anext(reader)).event for _ in range(2)]  # created, in_progress
    async with database_refusing_connections(database_url):
        seen += [r.event async for r in reader]
    assert tags(seen)[-1] == "response.failed"
    assert seen[-1].failed.response.status == rt.RESPONSE_STATUS_FAILED
    ours = [r for r in caplog.records if r.name.startswith("agentd")]
    assert any("could not be stored: UNAVAILABLE" in r.getMessage() for r in ours)
    assert not [r.getMessage() for r in ours if r.levelno >= logging.ERROR or r.exc_info]
    # Once the database answers again, the end is kept: not left in_progress for a lease.
    response_id = seen[0].created.response.id
    async def read():
        return (await responses.GetResponse(pb.GetResponseRequest(response_id=response_id))).response
    stored = await once_ended(read, rt.RESPONSE_STATUS_IN_PROGRESS)
    assert stored.status == rt.RESPONSE_STATUS_FAILED
    kept = await collect(responses.StreamResponseEvents(
        pb.StreamResponseEventsRequest(response_id=response_id)))
    assert tags(kept)[-1] == "response.failed"


async def test_an_id_with_nul_is_invalid_not_a_database_error(responses):
    code, _, fields = await error_of(responses.GetResponse(pb.GetResponseRequest(response_id="resp_\x00")))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["response_id"])


async def test_rest_streams_are_framed_as_openai_frames_them(server, fake):
    fake.script(Reply(text="framed", chunk_size=3), Reply(text="plain"))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as http:
        async with http.stream("POST", "/v1/openai/v1/responses",
                               json={"model": "test-model", "input": "hi", "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            frames = (await streamed.aread()).decode().split("\n\n")
        first = frames[0].split("\n")
        assert first[:2] == ["id: 0", "event: response.created"]
        data = json.loads(first[2].removeprefix("data: "))
        assert data["type"] == "response.created" and data["sequence_number"] == 0
        assert data["response"]["status"] == "in_progress" and data["response"]["object"] == "response"
        last = [f for f in frames if f][-1].split("\n")
        assert last[1] == "event: response.completed"
        plain = await http.post("/v1/responses", json={"model": "test-model", "input": "hi"})
        assert plain.status_code == 200 and plain.json()["output"][0]["content"][0]["text"] == "plain"
        missing = await http.post("/v1/responses", json={"model": "test-model", "input": "hi", "stream": True,
                                                         "previous_response_id": "resp_nope"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "previous_response_id"
        assert missing.json()["error"]["code"] == "previous_response_not_found"
