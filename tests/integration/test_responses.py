"""Responses over gRPC against a real agentd on SQLite and PostgreSQL, with the scripted fake
model server as the only fake."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio

from agentd import codec, paging
from agentd.app import Agentd
from agentd.v1 import common_pb2, responses_pb2_grpc
from agentd.v1 import response_events_pb2 as ev
from agentd.v1 import response_resource_pb2 as rt
from agentd.v1 import responses_pb2 as pb
from tests.conftest import error_of, make_settings
from tests.fakes.openai_server import FakeOpenAIServer, Reply

PLAIN_TEXT = ["response.created", "response.in_progress", "response.output_item.added",
              "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
              "response.output_text.done", "response.content_part.done", "response.output_item.done",
              "response.completed"]


@pytest.fixture
def fake():
    with FakeOpenAIServer() as server:
        yield server


@pytest_asyncio.fixture
async def server(database_url, tmp_path, fake):
    settings = make_settings(
        database_url, tmp_path,
        providers=[{"id": "fake", "type": "openai", "base_url": fake.base_url,
                    "models": [{"id": "test-model"}]}],
        shields=[{"id": "llama-guard", "provider_id": "llama-guard"}])
    agentd = Agentd(settings)
    await agentd.start()
    try:
        yield agentd
    finally:
        await agentd.stop(0)


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
    fake.script(Reply(text="Hello there", chunk_size=6, usage={"prompt_tokens": 5, "completion_tokens": 2}))
    events = await collect(responses.StreamResponse(stream(instructions="Be brief.")))
    assert tags(events) == PLAIN_TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0].created.response, events[-1].completed.response
    assert created.status == rt.RESPONSE_STATUS_IN_PROGRESS and not created.output
    assert "".join(e.output_text_delta.delta for e in events[4:6]) == "Hello there"
    delta = codec.to_json(events[4])
    assert delta["logprobs"] == [] and delta["item_id"].startswith("msg_") and delta["output_index"] == 0
    assert events[6].output_text_done.text == "Hello there"
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
