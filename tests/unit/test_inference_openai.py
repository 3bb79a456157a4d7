"""The openai provider against the real fake model server: what it sends on the wire, how it
reassembles streams, and how each upstream failure maps to an agentd status."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.protobuf import struct_pb2

from agentd.errors import AgentdError
from agentd.inference import (
    ChatMessage,
    ChatRequest,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    response_format_from,
    sampling_from,
)
from agentd.inference.openai_provider import OpenAIProvider
from agentd.v1 import agent_resources_pb2 as ar
from tests.fakes.openai_server import FakeOpenAIServer, Reply, ToolCallSpec, Usage

USER = (ChatMessage("user", "hi there"),)


@pytest.fixture
async def provider(fake_openai):
    p = OpenAIProvider("fake", fake_openai.base_url, "sk-test", models={"m": "served-m"})
    try:
        yield p
    finally:
        await p.close()


async def collect(provider, request):
    return [chunk async for chunk in provider.stream_chat(request)]


async def failure(provider, request) -> AgentdError:
    with pytest.raises(AgentdError) as caught:
        await collect(provider, request)
    return caught.value


def text_of(chunks) -> str:
    return "".join(c.text for c in chunks)


async def test_streams_text_with_finish_reason_and_usage(fake_openai, provider):
    fake_openai.script(Reply(text="Hello there, world", chunk_size=3, chunk_delay=0.05,
                             usage=Usage(prompt_tokens=7, completion_tokens=3)))
    chunks = await collect(provider, ChatRequest(model="m", messages=USER))
    assert text_of(chunks) == "Hello there, world"
    assert sum(1 for c in chunks if c.text) > 1  # passed on as they came, not one block
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 3, 10)
    sent = fake_openai.chat_requests[0]
    assert sent.model == "served-m"  # the provider's name for agentd's id
    assert sent.stream and sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.messages == [{"role": "user", "content": "hi there"}]


async def test_sends_none_of_the_sdk_telemetry_headers(fake_openai, provider):
    fake_openai.script(Reply(text="ok"))
    await collect(provider, ChatRequest(model="m", messages=USER, timeout_s=5))
    await collect(provider, ChatRequest(model="m", messages=USER))
    for sent in fake_openai.chat_requests:
        assert not [name for name in sent.headers if name.startswith("x-stainless")]
        assert sent.headers["content-type"] == "application/json"


async def test_finish_reason_length(fake_openai, provider):
    fake_openai.script(Reply(text="cut sho", finish_reason="length"))
    chunks = await collect(provider, ChatRequest(model="m", messages=USER))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


async def test_two_parallel_tool_calls_split_over_many_chunks(fake_openai, provider):
    fake_openai.script(Reply(tool_calls=[
        ToolCallSpec("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_a"),
        ToolCallSpec("get_time", {"zone": "Europe/Paris"}, id="call_b")],
        chunk_size=3, interleave_tool_calls=True))
    city = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = (ToolSpec("get_weather", "Weather of a city", city),
             ToolSpec("get_time", "Time in a zone", strict=True))
    request = ChatRequest(model="m", messages=USER, tools=tools, tool_choice="get_time",
                          parallel_tool_calls=True)
    chunks = await collect(provider, request)
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.name or ""
            call["arguments"] += delta.arguments
    assert sum(len(c.tool_calls) for c in chunks) > 6  # really fragmented
    assert calls == {
        0: {"id": "call_a", "name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
        1: {"id": "call_b", "name": "get_time", "arguments": '{"zone":"Europe/Paris"}'}}
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    body = fake_openai.chat_requests[0].body
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": city}}
    assert body["tools"][1]["function"]["strict"] is True
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert body["parallel_tool_calls"] is True


async def test_pieces_that_arrive_together_are_passed_on_as_one(fake_openai, provider):
    # A model that ran ahead of its reader: the text is one piece, each call one piece;
    # the finish and the usage stay chunks of their own.
    specs = [ToolCallSpec("get_weather", {"city": "Paris"}, id="call_a"),
             ToolCallSpec("get_time", {}, id="call_b")]
    fake_openai.script(Reply(text="Hello there, world", chunk_size=3, burst=True),
                       Reply(tool_calls=specs, chunk_size=3, burst=True))
    text = await collect(provider, ChatRequest(model="m", messages=USER))
    assert [(c.text, c.finish_reason, c.usage is not None) for c in text] == [
        ("Hello there, world", None, False), ("", "stop", False), ("", None, True)]
    calls = await collect(provider, ChatRequest(model="m", messages=USER))
    assert [c.tool_calls for c in calls[:2]] == [
        (ToolCallDelta(0, "call_a", "get_weather", '{"city":"Paris"}'),),
        (ToolCallDelta(1, "call_b", "get_time", "{}"),)]
    assert [c.finish_reason for c in calls[2:]] == ["tool_calls", None]


async def test_interleaved_calls_that_arrive_together_stay_apart(fake_openai, provider):
    fake_openai.script(Reply(tool_calls=[ToolCallSpec("a", {"x": "1234"}, id="call_a"),
                                         ToolCallSpec("b", {"y": "5678"}, id="call_b")],
                             chunk_size=3, interleave_tool_calls=True, burst=True))
    chunks = await collect(provider, ChatRequest(model="m", messages=USER))
    indexes = [d.index for c in chunks for d in c.tool_calls]
    assert indexes[:4] == [0, 1, 0, 1]  # alternating pieces are never joined across calls
    assert "".join(d.arguments for c in chunks for d in c.tool_calls if d.index == 1) == '{"y":"5678"}'


async def test_tool_call_history_is_sent_in_the_openai_form(fake_openai, provider):
    messages = (ChatMessage("system", "be brief"), ChatMessage("user", "weather?"),
                ChatMessage("assistant", None,
                            tool_calls=[ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
                ChatMessage("tool", "sunny", tool_call_id="call_1"))
    await collect(provider, ChatRequest(model="m", messages=messages, tool_choice="auto",
                                        tools=(ToolSpec("get_weather"),)))
    sent = fake_openai.chat_requests[0]  # the strict fake checks every call is answered
    assert sent.messages[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert sent.messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert sent.body["tool_choice"] == "auto"


async def test_a_history_sent_again_goes_on_the_wire_as_it_did_the_first_time(fake_openai, provider):
    # Each message is encoded once (ChatMessage.wire_json) and sent as it was with every turn.
    text = "h\u00e9llo \u2028 \"quoted\""
    call = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    history = [ChatMessage("user", text), ChatMessage("assistant", None, tool_calls=[call]),
               ChatMessage("tool", "sunny", tool_call_id="call_1"), ChatMessage("assistant", "It is sunny.")]
    fake_openai.script(Reply(text="one"), Reply(text="two"))
    await collect(provider, ChatRequest(model="m", messages=history, temperature=0.5))
    await collect(provider, ChatRequest(model="m", messages=[*history, ChatMessage("user", "again")]))
    first, second = fake_openai.chat_requests
    assert second.messages == [*first.messages, {"role": "user", "content": "again"}]
    assert first.messages[0] == {"role": "user", "content": text}
    assert (first.body["model"], first.body["temperature"], first.body["stream"]) == ("served-m", 0.5, True)
    # What the encoding keeps on a message changes nothing about it as a value.
    assert all(m.wire_json for m in history) and history[0] == ChatMessage("user", text)


def _params(**kwargs) -> ar.SamplingParams:
    return ar.SamplingParams(**kwargs)


@pytest.mark.parametrize("params, expected, absent", [
    (_params(strategy=ar.SamplingStrategy(greedy=ar.GreedySamplingStrategy())),
     {"temperature": 0}, ["top_p", "top_k", "max_tokens"]),
    (_params(), {"temperature": 0}, ["top_p", "max_tokens"]),  # no strategy: greedy
    (_params(strategy=ar.SamplingStrategy(top_p=ar.TopPSamplingStrategy(temperature=0.7, top_p=0.9))),
     {"temperature": 0.7, "top_p": 0.9}, ["top_k"]),
    (_params(strategy=ar.SamplingStrategy(top_p=ar.TopPSamplingStrategy(temperature=0.5))),
     {"temperature": 0.5, "top_p": 0.95}, []),
    (_params(strategy=ar.SamplingStrategy(top_k=ar.TopKSamplingStrategy(top_k=40))),
     {"top_k": 40}, ["temperature", "top_p"]),
    (_params(max_tokens=0), {"temperature": 0}, ["max_tokens"]),  # 0 is never sent
    (_params(max_tokens=64, stop=["END", "\n\n"], repetition_penalty=1.1),
     {"max_tokens": 64, "stop": ["END", "\n\n"], "repetition_penalty": 1.1}, []),
], ids=["greedy", "default", "top_p", "top_p_default", "top_k", "max_tokens_0", "max_stop_penalty"])
async def test_sampling_reaches_the_wire(fake_openai, provider, params, expected, absent):
    request = ChatRequest.with_sampling(sampling_from(params), model="m", messages=USER)
    await collect(provider, request)
    body = fake_openai.chat_requests[0].body
    assert {k: body.get(k) for k in expected} == expected
    assert [k for k in absent if k in body] == []


async def test_max_tokens_0_on_the_request_is_never_sent(fake_openai, provider):
    await collect(provider, ChatRequest(model="m", messages=USER, max_tokens=0))
    assert "max_tokens" not in fake_openai.chat_requests[0].body  # the strict fake would 400 on it


async def test_response_format_json_schema_is_converted(fake_openai, provider):
    schema = struct_pb2.Struct()
    schema.update({"title": "Answer", "type": "object", "properties": {"city": {"type": "string"}}})
    fmt = response_format_from(
        ar.AgentResponseFormat(json_schema=ar.AgentJsonSchemaFormat(json_schema=schema)))
    fake_openai.script(Reply(text='{"city":"Paris"}'))
    chunks = await collect(provider, ChatRequest(model="m", messages=USER, response_format=fmt))
    assert text_of(chunks) == '{"city":"Paris"}'
    assert fake_openai.chat_requests[0].body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "Answer",
        "schema": {"title": "Answer", "type": "object", "properties": {"city": {"type": "string"}}}}}


def test_response_format_grammar_is_refused_and_empty_is_none():
    grammar = ar.AgentResponseFormat(grammar=ar.AgentGrammarFormat(bnf=struct_pb2.Struct()))
    with pytest.raises(AgentdError) as caught:
        response_format_from(grammar, field="agent_config.response_format")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][0] == "agent_config.response_format"
    assert response_format_from(None) is None
    assert response_format_from(ar.AgentResponseFormat()) is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused_is_model_unavailable():
    provider = OpenAIProvider("down", f"http://127.0.0.1:{_closed_port()}/v1")
    try:
        error = await failure(provider, ChatRequest(model="m", messages=USER))
    finally:
        await provider.close()
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")
    assert "Connect call failed" in error.message  # refused, not reported as a timeout


async def test_listing_the_models_of_an_endpoint_that_refuses_is_unavailable_not_a_timeout():
    provider = OpenAIProvider("down", f"http://127.0.0.1:{_closed_port()}/v1")
    try:
        with pytest.raises(AgentdError) as caught:
            await provider.list_models(timeout_s=5)
    finally:
        await provider.close()
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")
    assert "cannot be reached" in caught.value.message


@pytest.mark.parametrize("status, reason", [(500, "MODEL_UNAVAILABLE"), (502, "MODEL_UNAVAILABLE"),
                                            (503, "MODEL_UNAVAILABLE"), (429, "MODEL_RATE_LIMITED")])
async def test_server_errors_are_model_unavailable_and_not_retried(fake_openai, provider, status, reason):
    fake_openai.script(Reply(error_status=status, error_message="overloaded"))
    error = await failure(provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, reason)
    assert "overloaded" in error.message
    assert len(fake_openai.chat_requests) == 1  # no hidden SDK retry


async def test_a_4xx_is_rejected_request_with_the_upstream_message(fake_openai, provider):
    fake_openai.script(Reply(error_status=400, error_message="context length exceeded: 9000 > 8192"))
    error = await failure(provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_REJECTED_REQUEST")
    assert "context length exceeded: 9000 > 8192" in error.message


async def test_an_unknown_model_upstream_is_model_not_found():
    with FakeOpenAIServer(models=["other"]) as fake:
        provider = OpenAIProvider("fake", fake.base_url)
        try:
            error = await failure(provider, ChatRequest(model="m", messages=USER))
        finally:
            await provider.close()
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")


async def test_refused_credentials_are_unavailable_not_the_callers_fault():
    with FakeOpenAIServer(api_key="sk-right") as fake:
        provider = OpenAIProvider("fake", fake.base_url, "sk-wrong")
        try:
            error = await failure(provider, ChatRequest(model="m", messages=USER))
        finally:
            await provider.close()
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")


@pytest.mark.parametrize("reply", [Reply(hang=True), Reply(text="a long answer", hang_after_chunks=2)],
                         ids=["before_headers", "mid_stream"])
async def test_timeout_is_deadline_exceeded(fake_openai, provider, reply):
    fake_openai.script(reply)
    started = asyncio.get_running_loop().time()
    error = await failure(provider, ChatRequest(model="m", messages=USER, timeout_s=0.3))
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "MODEL_TIMEOUT")
    assert asyncio.get_running_loop().time() - started < 2
    assert await asyncio.to_thread(fake_openai.chat_requests[0].done.wait, 5)  # the fake saw us leave


async def test_a_slow_stream_within_the_deadline_is_fine(fake_openai, provider):
    fake_openai.script(Reply(text="slow but steady", chunk_size=5, chunk_delay=0.05))
    chunks = await collect(provider, ChatRequest(model="m", messages=USER, timeout_s=2))
    assert text_of(chunks) == "slow but steady"


async def test_a_stream_cut_midway_is_model_unavailable(fake_openai, provider):
    fake_openai.script(Reply(text="this answer will be cut", chunk_size=2, disconnect_after_chunks=3))
    error = await failure(provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")


@pytest.mark.parametrize("reply", [Reply(hang=True), Reply(text="x" * 50, chunk_size=1, hang_after_chunks=3)],
                         ids=["before_headers", "mid_stream"])
async def test_cancelling_the_caller_closes_the_http_stream(fake_openai, provider, reply):
    fake_openai.script(reply)
    received = asyncio.Event()

    async def consume():
        async for _ in provider.stream_chat(ChatRequest(model="m", messages=USER)):
            received.set()

    task = asyncio.create_task(consume())
    (sent,) = await asyncio.to_thread(fake_openai.wait_for_requests, 1)
    if reply.hang_after_chunks:
        await asyncio.wait_for(received.wait(), 5)
    await asyncio.sleep(0.05)
    assert not sent.done.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(sent.done.wait, 5)  # the fake saw the disconnect


async def test_abandoning_the_stream_closes_it(fake_openai, provider):
    fake_openai.script(Reply(text="y" * 50, chunk_size=1, hang_after_chunks=5))
    stream = provider.stream_chat(ChatRequest(model="m", messages=USER))
    first = await anext(stream)
    assert first.text and set(first.text) == {"y"}  # the chunks sent before the hang
    await stream.aclose()
    assert await asyncio.to_thread(fake_openai.chat_requests[0].done.wait, 5)


async def test_list_models():
    with FakeOpenAIServer(models=["a", "org/b"]) as fake:
        provider = OpenAIProvider("fake", fake.base_url)
        try:
            assert await provider.list_models() == ["a", "org/b"]
        finally:
            await provider.close()


async def test_fields_the_endpoint_names_its_own_way_go_by_its_names(fake_openai):
    fake_openai.script(Reply(text="ok"))
    provider = OpenAIProvider("local", fake_openai.base_url, keep_alive=False,
                              field_names={"repetition_penalty": "repeat_penalty"})
    try:
        request = ChatRequest(model="m", messages=USER, max_tokens=9, repetition_penalty=1.1)
        chunks = [c async for c in provider.stream_chat(request)]
    finally:
        await provider.close()
    assert text_of(chunks) == "ok"
    body = fake_openai.chat_requests[0].body
    assert body["repeat_penalty"] == 1.1 and body["max_tokens"] == 9
    assert "repetition_penalty" not in body


class _RawSSE(BaseHTTPRequestHandler):
    """Answers every POST with the server's `body` as an SSE stream, as it is (or with the
    server's `status` and `headers` where the test sets them)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.seen.append(self.headers)
        if getattr(self.server, "raw", None):  # not HTTP at all
            self.wfile.write(self.server.raw)
            return
        self.send_response(getattr(self.server, "status", 200))
        headers = getattr(self.server, "headers", None) or {"content-type": "text/event-stream"}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        # `pieces`: the body in separate writes, apart in time, so that it arrives in reads
        # that cut it where the test says.
        for piece in getattr(self.server, "pieces", None) or [self.server.body]:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.02)

    def log_message(self, *args):
        pass


@pytest.fixture
def raw_sse():
    """A chat endpoint that streams a body the test sets (what the fake model never sends)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RawSSE)
    server.seen = []  # the headers of each request
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def raw_provider(raw_sse):
    p = OpenAIProvider("raw", f"http://127.0.0.1:{raw_sse.server_address[1]}/v1")
    try:
        yield p
    finally:
        await p.close()


@pytest.mark.parametrize("body, message", [
    (b'data: {"error": {"message": "overloaded"}}\n\n', "overloaded"),
    (b"data: not json\n\n", "not JSON"),
    # JSON, but not a chat.completion.chunk: the model's fault too, never INTERNAL.
    (b"data: [1, 2]\n\n", "a chunk is a list, not an object"),
    (b'data: {"choices": "x"}\n\n', "choices is not a list of objects"),
    (b'data: {"choices": [{"delta": "x"}]}\n\n', "delta is a str"),
    (b'data: {"choices": [{"delta": {"content": 123}}]}\n\n', "content is a int, not a string"),
    (b'data: {"choices": [{"delta": {"tool_calls": {"index": 0}}}]}\n\n', "tool_calls is a dict"),
    (b'data: {"choices": [{"delta": {"tool_calls": [{"index": "0"}]}}]}\n\n', "function or index"),
    (b'data: {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": 1}}]}}]}\n\n',
     "a tool call's arguments is a int"),
    (b'data: {"choices": [{"delta": {}, "finish_reason": ["stop"]}]}\n\n', "finish_reason is a list"),
    (b'data: {"choices": [], "usage": {"prompt_tokens": "5"}}\n\n', "usage.prompt_tokens"),
    (b'data: {"choices": [], "usage": {"prompt_tokens": 99999999999999999999}}\n\n', "usage.prompt_tokens"),
])
async def test_a_broken_stream_is_model_unavailable(raw_sse, raw_provider, body, message):
    raw_sse.body = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n' + body
    received = []
    with pytest.raises(AgentdError) as caught:
        async for chunk in raw_provider.stream_chat(ChatRequest(model="m", messages=USER)):
            received.append(chunk.text)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")
    assert message in error.message
    assert received == ["hi"]  # what came before the break, in the same read, is passed on first


async def test_half_of_a_character_split_across_chunks_is_a_replacement_character(raw_sse, raw_provider):
    # JSON escapes a character beyond U+FFFF as a UTF-16 pair; a server that cut between the
    # two halves sent text no protobuf string can hold. A pair within one chunk is kept.
    raw_sse.body = (b'data: {"choices": [{"index": 0, "delta": {"content": "a\\ud83d"}}]}\n\n'
                    b'data: {"choices": [{"index": 0, "delta": {"content": "\\ude00b \\ud83d\\ude00"}}]}\n\n'
                    b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
                    b'data: [DONE]\n\n')
    chunks = await collect(raw_provider, ChatRequest(model="m", messages=USER))
    assert text_of(chunks) == "a\ufffd\ufffdb \U0001f600"
    assert text_of(chunks).encode("utf-8")


async def test_multi_line_data_and_comments_are_read_as_server_sent_events(raw_sse, raw_provider):
    raw_sse.body = (b": keep-alive\n\nevent: chunk\ndata: {\"choices\": [{\"index\": 0,\ndata:  \"delta\": "
                    b"{\"content\": \"hi\"}, \"finish_reason\": \"stop\"}]}\n\ndata: [DONE]\n\n")
    chunks = await collect(raw_provider, ChatRequest(model="m", messages=USER))
    assert text_of(chunks) == "hi" and chunks[-1].finish_reason == "stop"


async def test_events_cut_anywhere_between_reads_and_crlf_lines_are_read_whole(raw_sse, raw_provider):
    # The first event's data is two lines: cut between that line's CR and LF, a reader that
    # took the CR for a line end would see a blank line there and split the event in two.
    first = b'data: {"choices": [{"index": 0,\r\ndata: "delta": {"content": "h"}}]}\r\n\r\n'
    body = first + (b'data: {"choices": [{"index": 0, "delta": {"content": "i"}, "finish_reason": "stop"}]}'
                    b'\r\n\r\ndata: [DONE]\r\n\r\n')
    cut_in_crlf = first.index(b"\r\n") + 1
    later = len(first) + 30  # inside the second event
    raw_sse.pieces = [body[:9], body[9:cut_in_crlf], body[cut_in_crlf:later], body[later:]]
    chunks = await collect(raw_provider, ChatRequest(model="m", messages=USER))
    assert [c.text for c in chunks if c.text] == ["h", "i"] and chunks[-1].finish_reason == "stop"


async def test_what_follows_done_is_not_read_as_chunks(raw_sse, raw_provider):
    raw_sse.body = (b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
                    b'\n\ndata: [DONE]\n\n'
                    b'data: {"choices": [{"index": 0, "delta": {"content": "late"}}]}\n\n')
    chunks = await collect(raw_provider, ChatRequest(model="m", messages=USER))
    assert text_of(chunks) == "hi"


async def test_an_error_page_that_is_not_json_is_quoted_in_part(raw_sse, raw_provider):
    # A proxy in front of the model answers with its own page, not an OpenAI error object.
    raw_sse.status, raw_sse.headers = 502, {"content-type": "text/html"}
    raw_sse.body = b"<html>Bad Gateway " + b"x" * 500_000 + b"</html>"  # more than is read
    error = await failure(raw_provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")
    assert "HTTP 502" in error.message and "<html>Bad Gateway xxx" in error.message
    assert len(error.message) < 500  # the page's start, not all of it


@pytest.mark.parametrize("body", [b'{"error": "Input validation error: inputs too long"}',
                                  b'{"detail": [{"msg": "Input validation error: inputs too long"}]}'])
async def test_an_error_object_without_a_message_field_is_quoted(raw_sse, raw_provider, body):
    # TGI and FastAPI servers say what went wrong outside OpenAI's error.message.
    raw_sse.status, raw_sse.headers, raw_sse.body = 422, {"content-type": "application/json"}, body
    error = await failure(raw_provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_REJECTED_REQUEST")
    assert "Input validation error: inputs too long" in error.message


async def test_a_body_that_cannot_be_decoded_is_model_unavailable(raw_sse, raw_provider):
    raw_sse.headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    raw_sse.body = b"this is not gzip"
    error = await failure(raw_provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")


async def test_a_cookie_the_endpoint_sets_goes_back_with_the_next_call(raw_sse, raw_provider):
    # A load balancer's sticky session: the next call must reach the same backend.
    raw_sse.headers = {"content-type": "text/event-stream", "set-cookie": "backend=b7; Path=/"}
    raw_sse.body = (b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
                    b'\n\ndata: [DONE]\n\n')
    for _ in range(2):
        assert text_of(await collect(raw_provider, ChatRequest(model="m", messages=USER))) == "hi"
    assert raw_sse.seen[0].get("cookie") is None
    assert raw_sse.seen[1].get("cookie") == "backend=b7"


async def test_a_gateways_own_authorization_replaces_the_key_as_the_sdk_has_it(raw_sse, monkeypatch):
    # The SDK reads extra headers from OPENAI_CUSTOM_HEADERS; one named Authorization (any
    # case) is sent instead of the key, not beside it.
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "authorization: Bearer gw-token\nX-Team: blue")
    provider = OpenAIProvider("gw", f"http://127.0.0.1:{raw_sse.server_address[1]}/v1", "sk-unused")
    raw_sse.body = (b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
                    b'\n\ndata: [DONE]\n\n')
    try:
        assert text_of(await collect(provider, ChatRequest(model="m", messages=USER))) == "hi"
    finally:
        await provider.close()
    assert raw_sse.seen[0].get_all("authorization") == ["Bearer gw-token"]
    assert raw_sse.seen[0].get("x-team") == "blue"


@pytest.mark.parametrize("setup", ["error_body", "chunk", "not_http"])
async def test_what_no_parser_can_take_is_model_unavailable_not_internal(raw_sse, raw_provider, setup):
    if setup == "error_body":  # nested past the JSON parser's depth
        raw_sse.status, raw_sse.headers = 500, {"content-type": "application/json"}
        raw_sse.body = b"[" * 60000
    elif setup == "chunk":
        raw_sse.body = b"data: " + b"[" * 60000 + b"\n\n"
    else:
        raw_sse.raw = b"HTTP/1.1 2x0 Weird\r\n\r\n"
    error = await failure(raw_provider, ChatRequest(model="m", messages=USER))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")
