"""How a response handles what its guardrails find, through the Shields interface
(engine/shields.py) with the turn shield tests' small keyword implementation: a blocking
violation of the input or of the model's text completes the response with one refusal
message (events numbered without gaps, stored, synced to its conversation), a non-blocking
one is only logged, and the openai SDK reads the refusal as its own types. The rest is real: agentd on
SQLite, the scripted fake model, the SDK over the HTTP gateway."""

from __future__ import annotations

import logging

import grpc
import openai
import pytest_asyncio
from openai.types.responses import ResponseOutputMessage, ResponseOutputRefusal

from agentd import codec, paging
from agentd.context import LOCAL_PRINCIPAL
from agentd.v1 import conversations_pb2 as cv
from agentd.v1 import response_items_pb2 as it
from agentd.v1 import response_resource_pb2 as rt
from agentd.v1 import responses_pb2 as pb
from agentd.v1 import responses_pb2_grpc
from tests.conftest import error_of, fake_model_providers, make_settings, running
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.fakes.search_server import FakeSearchServer, Hit, SearchReply
from tests.integration.test_responses import PLAIN_TEXT, collect, create, stream, tags
from tests.unit.test_turn_shields import KeywordShields

REFUSED = ["response.created", "response.in_progress", "response.output_item.added",
           "response.content_part.added", "response.refusal.delta", "response.refusal.done",
           "response.content_part.done", "response.output_item.done", "response.completed"]
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


@pytest_asyncio.fixture
async def server(tmp_path, fake_openai):
    settings = make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path,
                             providers=fake_model_providers(fake_openai))
    async with running(settings) as agentd:
        agentd.responses.shields = KeywordShields()
        yield agentd


@pytest_asyncio.fixture
async def responses(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield responses_pb2_grpc.ResponsesServiceStub(channel)


def refusal_of(response: rt.Response) -> str:
    (item,) = response.output
    (part,) = item.message.content.parts.parts
    assert item.message.role == it.RESPONSE_MESSAGE_ROLE_ASSISTANT
    assert item.message.status == it.RESPONSE_ITEM_STATUS_COMPLETED
    return part.refusal.refusal


def assert_refused_stream(events, text: str) -> rt.Response:
    """The refusal events of OpenAI's stream, numbered densely, ending a completed response."""
    assert tags(events) == REFUSED
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, part_added, delta, done, part_done, item_done = (events[i] for i in range(2, 8))
    item_id = added.output_item_added.item.message.id
    assert item_id.startswith("msg_") and added.output_item_added.output_index == 0
    assert part_added.content_part_added.part.HasField("refusal")
    assert delta.refusal_delta.delta == text and delta.refusal_delta.item_id == item_id
    assert done.refusal_done.refusal == text
    assert part_done.content_part_done.part.refusal.refusal == text
    completed = events[-1].completed.response
    assert item_done.output_item_done.item == completed.output[0]
    assert completed.status == rt.RESPONSE_STATUS_COMPLETED and not completed.HasField("error")
    assert refusal_of(completed) == text
    return completed


async def test_an_input_violation_completes_with_a_refusal_and_no_model_call(server, responses, fake_openai):
    events = await collect(responses.StreamResponse(stream(input="something forbidden",
                                                           guardrails=["guard-in"])))
    completed = assert_refused_stream(events, "I can't answer that.")
    assert fake_openai.chat_requests == []
    assert server.responses.shields.checked == [(("guard-in",), ["user:something forbidden"])]
    # Stored and retrievable like any response; the unary form gives the same.
    stored = (await responses.GetResponse(pb.GetResponseRequest(response_id=completed.id))).response
    assert stored == completed
    unary = (await responses.CreateResponse(create(input="forbidden", guardrails=["guard-in"]))).response
    assert unary.status == rt.RESPONSE_STATUS_COMPLETED and refusal_of(unary) == "I can't answer that."


async def test_an_output_violation_replaces_the_text_which_is_never_streamed(server, responses, fake_openai):
    fake_openai.script(Reply(text="the secret is 42", chunk_size=4))
    events = await collect(responses.StreamResponse(stream(input="tell me", instructions="Be brief.",
                                                           guardrails=["guard-in", "guard-out"])))
    assert_refused_stream(events, "I can't answer that.")
    assert len(fake_openai.chat_requests) == 1
    # The output check saw the conversation and the model's whole text, once.
    assert server.responses.shields.checked[-1] == (
        ("guard-in", "guard-out"), ["system:Be brief.", "user:tell me", "assistant:the secret is 42"])
    assert len(server.responses.shields.checked) == 2


async def test_text_that_passes_is_streamed_with_the_usual_events(server, responses, fake_openai):
    fake_openai.script(Reply(text="Hello there", chunk_size=6, burst=True))
    events = await collect(responses.StreamResponse(stream(guardrails=["guard-out"])))
    assert tags(events) == PLAIN_TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.output_text_delta.delta for e in events) == "Hello there"
    assert events[-1].completed.response.output[0].message.content.parts.parts[0].output_text.text == \
        "Hello there"


async def test_text_before_function_calls_is_checked_before_the_calls_begin(responses, fake_openai):
    fake_openai.script(Reply(text="secret plan", tool_calls=[ToolCallSpec("get_weather", {}, id="c1")]))
    events = await collect(responses.StreamResponse(stream(tools=[WEATHER], guardrails=["guard-out"])))
    completed = assert_refused_stream(events, "I can't answer that.")
    assert len(completed.output) == 1  # no function call item was begun


async def test_a_non_blocking_violation_is_only_logged(server, responses, fake_openai, caplog):
    server.responses.shields = KeywordShields(level="warn")
    fake_openai.script(Reply(text="the secret is fine"))
    with caplog.at_level(logging.INFO, logger="agentd.responses"):
        response = (await responses.CreateResponse(create(input="forbidden but harmless",
                                                          guardrails=["guard-in", "guard-out"]))).response
    assert response.output[0].message.content.parts.parts[0].output_text.text == "the secret is fine"
    logged = [r.getMessage() for r in caplog.records if "not blocking" in r.getMessage()]
    assert len(logged) == 2 and "in the input" in logged[0] and "in the output" in logged[1]


async def test_a_violation_without_a_message_gets_a_plain_refusal(server, responses):
    server.responses.shields = KeywordShields(user_message=None)
    response = (await responses.CreateResponse(create(input="forbidden", guardrails=["guard-in"]))).response
    assert refusal_of(response) == "I can't help with that: shield 'guard-in' blocked it."


async def test_a_refused_response_is_synced_to_its_conversation(server, responses):
    conversations = server.responses.conversations
    conversation = await conversations.create(LOCAL_PRINCIPAL, cv.Conversation(id="conv_guarded"), [])
    response = (await responses.CreateResponse(create(input="forbidden", conversation=conversation.id,
                                                      guardrails=["guard-in"]))).response
    items, _ = await conversations.list_items(LOCAL_PRINCIPAL, conversation.id, paging.Cursor(), 10,
                                              descending=False)
    assert [codec.to_json(i)["content"] for i in items] == [
        [{"type": "input_text", "text": "forbidden"}],
        [{"type": "refusal", "refusal": "I can't answer that."}]]
    assert items[1].message.id == response.output[0].message.id


async def test_a_guardrail_the_shields_do_not_declare_is_not_found_naming_the_param(responses, fake_openai):
    assert await error_of(responses.CreateResponse(create(guardrails=["guard-in", "llama-guard"]))) == (
        grpc.StatusCode.NOT_FOUND, "SHIELD_NOT_FOUND", ["guardrails"])
    assert fake_openai.chat_requests == []


async def test_the_openai_sdk_reads_the_refusal_unary_and_streamed(server, fake_openai):
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="sk-test",
                                  max_retries=0) as client:
        response = await client.responses.create(model="test-model", input="forbidden",
                                                 extra_body={"guardrails": ["guard-in"]})
        assert response.status == "completed"
        (message,) = response.output
        assert isinstance(message, ResponseOutputMessage) and message.role == "assistant"
        (part,) = message.content
        assert isinstance(part, ResponseOutputRefusal) and part.refusal == "I can't answer that."
        assert response.output_text == ""
        fake_openai.script(Reply(text="the secret is 42"))
        async with client.responses.stream(model="test-model", input="tell me",
                                           extra_body={"guardrails": ["guard-out"]}) as streamed:
            events = [event async for event in streamed]
            final = await streamed.get_final_response()
    assert [e.type for e in events] == REFUSED
    assert [e.sequence_number for e in events] == list(range(len(events)))
    refusal_done = events[5]
    assert refusal_done.type == "response.refusal.done" and refusal_done.refusal == "I can't answer that."
    assert isinstance(final.output[0].content[0], ResponseOutputRefusal)
    assert final.output[0].content[0].refusal == "I can't answer that."


async def test_items_finished_before_the_blocked_model_call_stay_before_the_refusal(tmp_path, fake_openai):
    with FakeSearchServer() as search:
        search.script(SearchReply(results=[Hit("agentd", "https://agentd.example", "runs agents")]))
        settings = make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path,
                                 providers=fake_model_providers(fake_openai),
                                 websearch={"api_key": "sk-search", "base_url": search.base_url})
        async with running(settings) as agentd, \
                grpc.aio.insecure_channel(f"127.0.0.1:{agentd.grpc_port}") as channel:
            agentd.responses.shields = KeywordShields()
            fake_openai.script(Reply(tool_calls=[ToolCallSpec("web_search", {"query": "agentd"}, id="s1")]),
                               Reply(text="the secret is out"))
            stub = responses_pb2_grpc.ResponsesServiceStub(channel)
            events = await collect(stub.StreamResponse(stream(tools=[{"type": "web_search"}],
                                                              guardrails=["guard-out"])))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.output_text.delta" not in tags(events)
    completed = events[-1].completed.response
    assert [o.WhichOneof("item") for o in completed.output] == ["web_search_call", "message"]
    assert completed.output[1].message.content.parts.parts[0].refusal.refusal == "I can't answer that."
    refusal_part = next(e for e in events if e.HasField("content_part_added")).content_part_added
    assert refusal_part.output_index == 1 and refusal_part.part.HasField("refusal")
