"""The fake model server, driven by the real openai SDK: if the SDK accepts it, agentd's
tests can trust it to stand in for the model."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.fakes.openai_server import (
    CHAT_PATH,
    FakeOpenAIServer,
    Reply,
    ToolCallSpec,
    Usage,
)

MODEL = "fake-model"
HI = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Generous bound for "promptly": a wedged close() or an unnoticed hang takes forever.
PROMPT = 3.0


@pytest.fixture
async def aclient(fake_openai: FakeOpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
def client(fake_openai: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sync_client:
        yield sync_client


# --------------------------------------------------------------------------- text


async def test_non_stream_text(fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI) -> None:
    fake_openai.script(Reply(text="Hello there", usage=Usage(prompt_tokens=7, completion_tokens=2)))

    resp = await aclient.chat.completions.create(model=MODEL, messages=HI)

    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == MODEL
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (7, 2, 9)
    assert fake_openai.pending == 0


async def test_usage_defaults_to_word_counts(fake_openai: FakeOpenAIServer,
                                             aclient: openai.AsyncOpenAI) -> None:
    fake_openai.script(Reply(text="one two three"))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user",
                                                            "content": "count to three please"}]

    resp = await aclient.chat.completions.create(model=MODEL, messages=messages)

    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (6, 3, 9)


async def test_stream_text_reassembles_with_usage_chunk(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI
) -> None:
    text = "The quick brown fox jumps"
    fake_openai.script(Reply(text=text, chunk_size=3))

    stream = await aclient.chat.completions.create(
        model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) == 9 and all(len(p) <= 3 for p in pieces)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # The usage chunk comes last, alone, with no choices; the others carry no usage.
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (1, 5, 6)
    assert all(c.usage is None and c.choices for c in body)


async def test_stream_without_include_usage_sends_no_usage(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI
) -> None:
    fake_openai.script(Reply(text="abc"))

    chunks = [c async for c in await aclient.chat.completions.create(model=MODEL, messages=HI, stream=True)]

    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_wire_format(fake_openai: FakeOpenAIServer, client: openai.OpenAI) -> None:
    fake_openai.script(Reply(text="hey"))

    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=HI,
                                                                stream=True) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        raw = b"".join(resp.iter_bytes()).decode()

    events = raw.split("\n\n")
    assert events[-1] == ""  # every event ends with a blank line
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0][len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"


def test_burst_sends_every_event_in_one_write(fake_openai: FakeOpenAIServer, client: openai.OpenAI) -> None:
    fake_openai.script(Reply(text="hello there", chunk_size=2, burst=True))

    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=HI,
                                                                stream=True) as resp:
        raw = b"".join(resp.iter_bytes()).decode()

    assert len(fake_openai.chat_requests[0].sent_at) == 1  # one write, not one per event
    events = raw.split("\n\n")
    assert events[-2] == "data: [DONE]"
    assert "".join(json.loads(e[len("data: "):])["choices"][0]["delta"].get("content") or ""
                   for e in events[:-2]) == "hello there"


@pytest.mark.parametrize("pacing", [{"chunk_delay": 0.1}, {"hang_after_chunks": 2},
                                    {"disconnect_after_chunks": 2}])
def test_burst_refuses_pacing(pacing: dict) -> None:
    with pytest.raises(ValueError, match="burst"):
        Reply(text="x", burst=True, **pacing)


@pytest.mark.parametrize("stream", [False, True])
async def test_finish_reason_length(fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI,
                                    stream: bool) -> None:
    fake_openai.script(Reply(text="cut sho", finish_reason="length"))

    if stream:
        chunks = [c async for c in await aclient.chat.completions.create(model=MODEL, messages=HI,
                                                                         stream=True)]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        assert finishes == ["length"]
    else:
        resp = await aclient.chat.completions.create(model=MODEL, messages=HI)
        assert resp.choices[0].finish_reason == "length"
        assert resp.choices[0].message.content == "cut sho"


# --------------------------------------------------------------------------- tool calls


async def test_tool_call_non_stream(fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI) -> None:
    fake_openai.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="call_1")]))

    resp = await aclient.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER_TOOL])

    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_tool_call_stream_via_sdk_helper(fake_openai: FakeOpenAIServer,
                                               aclient: openai.AsyncOpenAI) -> None:
    args = '{"city":"Paris"}'
    fake_openai.script(Reply(tool_calls=[ToolCallSpec(name="get_weather", arguments=args, id="call_1")]))

    arg_deltas = []
    async with aclient.chat.completions.stream(model=MODEL, messages=HI, tools=[WEATHER_TOOL]) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                arg_deltas.append(event.arguments_delta)
        final = await stream.get_final_completion()

    assert len(arg_deltas) > 1, "arguments must be split across several chunks"
    assert "".join(arg_deltas) == args
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get_weather", args)


@pytest.mark.parametrize("interleave", [False, True])
async def test_parallel_tool_calls_stream_by_index(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI, interleave: bool
) -> None:
    specs = [
        ToolCallSpec("get_weather", '{"city":"Paris"}', id="call_a"),
        ToolCallSpec("get_weather", '{"city":"Tokyo"}', id="call_b"),
        ToolCallSpec("get_time", '{"tz":"UTC"}', id="call_c"),
    ]
    fake_openai.script(Reply(text="Checking.", tool_calls=specs, chunk_size=5,
                             interleave_tool_calls=interleave))

    stream = await aclient.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER_TOOL],
                                                   stream=True)
    calls: dict[int, dict[str, str]] = {}
    index_order, fragments, text, finish = [], [], "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for frag in delta.tool_calls or []:
            index_order.append(frag.index)
            call = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += frag.id or ""
            if frag.function:
                call["name"] += frag.function.name or ""
                call["arguments"] += frag.function.arguments or ""
                fragments.append(frag.function.arguments)

    assert text == "Checking."
    assert finish == "tool_calls"
    assert [calls[i] for i in sorted(calls)] == [
        {"id": s.id, "name": s.name, "arguments": s.arguments} for s in specs
    ]
    assert len([f for f in fragments if f]) > len(specs), "arguments must be split across chunks"
    # Sequential streaming sends each call whole; interleaved streaming mixes them.
    assert (index_order == sorted(index_order)) is not interleave


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type"),
    [
        (503, openai.InternalServerError, "server_error"),
        (429, openai.RateLimitError, "requests"),
        (400, openai.BadRequestError, "invalid_request_error"),
    ],
)
async def test_error_status_maps_to_sdk_exception(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI, status: int, exc_class: type, error_type: str
) -> None:
    fake_openai.script(Reply(error_status=status, error_message="overloaded", error_code="busy"))

    with pytest.raises(exc_class) as excinfo:
        await aclient.chat.completions.create(model=MODEL, messages=HI)

    err = excinfo.value
    assert isinstance(err, openai.APIStatusError)
    assert err.status_code == status
    assert err.body == {"message": "overloaded", "type": error_type, "param": None, "code": "busy"}
    assert err.request_id and err.request_id.startswith("req_")


def test_error_with_stream_true(fake_openai: FakeOpenAIServer, client: openai.OpenAI) -> None:
    fake_openai.script(Reply(error_status=503, error_message="overloaded"))

    with pytest.raises(openai.InternalServerError, match="overloaded"):
        client.chat.completions.create(model=MODEL, messages=HI, stream=True)


def test_sdk_retry_consumes_next_scripted_reply(fake_openai: FakeOpenAIServer) -> None:
    # retry-after-ms keeps the SDK's backoff short; it also shows Reply.headers arrive.
    fake_openai.script(Reply(error_status=503, headers={"retry-after-ms": "10"}), Reply(text="ok"))

    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=1) as retrying:
        resp = retrying.chat.completions.create(model=MODEL, messages=HI)

    assert resp.choices[0].message.content == "ok"
    assert [r.status for r in fake_openai.chat_requests] == [503, 200]


# --------------------------------------------------------------------------- timing


async def test_delay_holds_back_the_response(fake_openai: FakeOpenAIServer,
                                             aclient: openai.AsyncOpenAI) -> None:
    fake_openai.script(Reply(text="slow", delay=0.5), Reply(text="fast"))
    finished: list[str] = []

    async def ask() -> None:
        resp = await aclient.chat.completions.create(model=MODEL, messages=HI)
        finished.append(resp.choices[0].message.content)

    slow = asyncio.create_task(ask())
    await asyncio.to_thread(fake_openai.wait_for_requests, 1)  # "slow" is now consumed
    await ask()
    await slow

    assert finished == ["fast", "slow"]


async def test_chunk_delay_spaces_events_and_streams_incrementally(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI
) -> None:
    chunk_delay = 0.15
    fake_openai.script(Reply(text="abcdefgh", chunk_size=2, chunk_delay=chunk_delay))

    stream = await aclient.chat.completions.create(model=MODEL, messages=HI, stream=True)
    arrived = []
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            arrived.append(time.monotonic())

    [rec] = fake_openai.chat_requests
    assert rec.done.wait(PROMPT)
    # Events: role, 4 pieces, finish, [DONE]; the server waited between each two.
    assert len(rec.sent_at) == 7 and len(arrived) == 4
    gaps = [b - a for a, b in itertools.pairwise(rec.sent_at)]
    assert min(gaps) >= chunk_delay * 0.9  # a lower bound: sleeping never makes it flaky
    # The first piece reached the client before the server sent the last one.
    assert arrived[0] < rec.sent_at[-1]


# --------------------------------------------------------------------------- failures


async def test_disconnect_mid_stream_raises(fake_openai: FakeOpenAIServer,
                                            aclient: openai.AsyncOpenAI) -> None:
    # Chunks: 0 role, 1 "ab", 2 "cd", then the connection drops.
    fake_openai.script(Reply(text="abcdefghij", chunk_size=2, disconnect_after_chunks=3))

    stream = await aclient.chat.completions.create(model=MODEL, messages=HI, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)

    assert received == ["", "ab", "cd"]


def test_disconnect_before_non_stream_response_raises(fake_openai: FakeOpenAIServer,
                                                      client: openai.OpenAI) -> None:
    fake_openai.script(Reply(text="never", disconnect_after_chunks=0))

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=HI)
    assert fake_openai.chat_requests[0].status is None


def test_hang_times_out_client_and_server_still_closes_promptly() -> None:
    fake = FakeOpenAIServer().start()
    try:
        fake.script(Reply(hang=True))
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0,
                           timeout=0.3) as sync_client:
            with pytest.raises(openai.APITimeoutError):
                sync_client.chat.completions.create(model=MODEL, messages=HI)
        # The handler notices the client hung up and lets go of the request.
        [rec] = fake.chat_requests
        assert rec.done.wait(PROMPT)
        assert rec.status is None
    finally:
        started = time.monotonic()
        fake.close()
    assert time.monotonic() - started < PROMPT


def test_hang_after_chunks_stalls_the_stream() -> None:
    with FakeOpenAIServer() as fake:
        fake.script(Reply(text="abcdef", chunk_size=2, hang_after_chunks=2))
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0,
                           timeout=0.3) as sync_client:
            stream = sync_client.chat.completions.create(model=MODEL, messages=HI, stream=True)
            received = []
            with pytest.raises(openai.APITimeoutError):
                for chunk in stream:
                    received.append(chunk.choices[0].delta.content)
    assert received == ["", "ab"]


def _new_threads_ended(threads_before: set[threading.Thread]) -> bool:
    """True once every thread started since `threads_before` has ended, waiting at most
    PROMPT: a cut handler needs a moment to be scheduled and return, but never its timeout."""
    deadline = time.monotonic() + PROMPT
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t not in threads_before]:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize(
    "reply",
    [Reply(hang=True), Reply(delay=60), Reply(text="abcdef", chunk_size=2, chunk_delay=60)],
    ids=["hang", "delay", "chunk_delay"],
)
def test_close_cuts_an_open_request(reply: Reply) -> None:
    threads_before = set(threading.enumerate())
    fake = FakeOpenAIServer().start()
    fake.script(reply)
    outcome: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0,
                           timeout=60) as sync_client:
            try:
                for _ in sync_client.chat.completions.create(model=MODEL, messages=HI, stream=True):
                    pass
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    fake.wait_for_requests(1)

    started = time.monotonic()
    fake.close()
    assert time.monotonic() - started < PROMPT
    caller.join(PROMPT)
    assert not caller.is_alive()
    # Cut, not timed out: the client learnt of it at once, long before its 60 s timeout.
    [exc] = outcome
    assert isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
    # The handler stopped waiting too, rather than being left behind asleep.
    assert _new_threads_ended(threads_before)


def test_close_ends_handlers_of_idle_keep_alive_connections() -> None:
    threads_before = set(threading.enumerate())
    fake = FakeOpenAIServer().start()
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sync_client:
        sync_client.chat.completions.create(model=MODEL, messages=HI)  # leaves a pooled connection open
        started = time.monotonic()
        fake.close()
        assert time.monotonic() - started < PROMPT
        # The handler blocked reading the connection's next request has ended too.
        assert _new_threads_ended(threads_before)


# --------------------------------------------------------------------------- recording


async def test_requests_are_recorded(fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI) -> None:
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"}]
    await aclient.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],
        temperature=0.2,
        max_tokens=50,
        extra_headers={"X-Trace": "abc"},
    )
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    async for _ in stream:
        pass

    first, second = fake_openai.requests
    assert (first.method, first.path) == ("POST", CHAT_PATH)
    assert first.model == MODEL
    assert first.messages == messages
    assert first.tools == [WEATHER_TOOL]
    assert first.body["temperature"] == 0.2
    assert first.body["max_tokens"] == 50
    assert first.stream is False
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["x-trace"] == "abc"
    assert first.status == 200
    assert first.reply is not None and first.reply.text == "echo: weather?"
    assert second.stream is True
    assert second.body["stream_options"] == {"include_usage": True}
    assert first.received_at <= second.received_at


async def test_concurrent_requests_each_consume_one_reply(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI
) -> None:
    texts = [f"reply {i}" for i in range(20)]
    fake_openai.script(*(Reply(text=t, chunk_delay=0.01) for t in texts))

    async def ask() -> str:
        chunks = [c async for c in await aclient.chat.completions.create(model=MODEL, messages=HI,
                                                                         stream=True)]
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    answers = await asyncio.gather(*(ask() for _ in texts))

    assert sorted(answers) == sorted(texts)
    assert len(fake_openai.chat_requests) == 20 and fake_openai.pending == 0


# --------------------------------------------------------------------------- defaults


async def test_default_reply_echoes_last_user_message(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI
) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]},
    ]

    resp = await aclient.chat.completions.create(model=MODEL, messages=messages)

    assert resp.choices[0].message.content == "echo: second part"


async def test_default_reply_is_configurable_and_reset_restores_it(
    fake_openai: FakeOpenAIServer, aclient: openai.AsyncOpenAI
) -> None:
    fake_openai.set_default_reply(Reply(text="fixed"))
    fake_openai.script(Reply(text="scripted"))

    answers = []
    for _ in range(3):
        resp = await aclient.chat.completions.create(model=MODEL, messages=HI)
        answers.append(resp.choices[0].message.content)
    assert answers == ["scripted", "fixed", "fixed"]

    fake_openai.script(Reply(text="left over"))
    fake_openai.reset()
    assert fake_openai.requests == [] and fake_openai.pending == 0
    resp = await aclient.chat.completions.create(model=MODEL, messages=HI)
    assert resp.choices[0].message.content == "echo: hi"


async def test_callable_reply_sees_the_request(fake_openai: FakeOpenAIServer,
                                               aclient: openai.AsyncOpenAI) -> None:
    fake_openai.script(lambda req: Reply(text=f"{len(req.messages)} messages"))

    resp = await aclient.chat.completions.create(model=MODEL, messages=HI * 3)

    assert resp.choices[0].message.content == "3 messages"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": MODEL}, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": []}, "messages", "empty_array"),
        ({"messages": HI}, None, None),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
         "invalid_value"),
    ],
)
def test_malformed_request_is_400(
    fake_openai: FakeOpenAIServer, client: openai.OpenAI, body: dict, param: str | None, code: str | None
) -> None:
    fake_openai.script(Reply(text="unused"))

    # The SDK's create() refuses to omit required fields, so post the raw body through it.
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.post("/chat/completions", body=body, cast_to=object)

    assert excinfo.value.status_code == 400
    assert excinfo.value.body["type"] == "invalid_request_error"
    assert (excinfo.value.body["param"], excinfo.value.body["code"]) == (param, code)
    assert fake_openai.pending == 1, "a rejected request must not consume a scripted reply"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "42"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 1}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "huge"}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "system", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, *HI]},
         "messages[0].content[0]"),
        (
            {
                "messages": [
                    *HI,
                    {"role": "assistant", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "user", "content": "and?"},
                ]
            },
            "messages",
        ),
    ],
)
def test_strict_validation_rejects_what_the_service_rejects(
    fake_openai: FakeOpenAIServer, client: openai.OpenAI, kwargs: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(**{"model": MODEL, "messages": HI, **kwargs})

    assert excinfo.value.body["param"] == param


def test_answered_tool_calls_pass_validation(fake_openai: FakeOpenAIServer, client: openai.OpenAI) -> None:
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in (1, 2)
    ]
    messages = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
    ]

    resp = client.chat.completions.create(model=MODEL, messages=messages)

    assert resp.choices[0].message.content == "echo: hi"
    assert fake_openai.chat_requests[0].body["messages"][1]["tool_calls"] == calls


def test_text_and_image_parts_of_a_user_message_pass_validation(
    fake_openai: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == "echo: what is this?"


def test_strict_off_accepts_unanswered_tool_calls() -> None:
    with FakeOpenAIServer(strict=False) as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sync_client:
            resp = sync_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=0)
    assert resp.choices[0].message.content == "echo: hi"


def test_models_listed_and_unknown_model_is_404() -> None:
    with FakeOpenAIServer(models=["m1", "m2"]) as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sync_client:
            assert [m.id for m in sync_client.models.list()] == ["m1", "m2"]
            assert sync_client.models.retrieve("m2").id == "m2"
            with pytest.raises(openai.NotFoundError) as excinfo:
                sync_client.chat.completions.create(model="nope", messages=HI)
            assert excinfo.value.body["code"] == "model_not_found"
            ok = sync_client.chat.completions.create(model="m1", messages=HI)
    assert ok.model == "m1"


def test_api_key_is_enforced_when_configured() -> None:
    with FakeOpenAIServer(api_key="sk-right") as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError) as excinfo:
                wrong.chat.completions.create(model=MODEL, messages=HI)
            assert excinfo.value.body["code"] == "invalid_api_key"
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-right", max_retries=0) as right:
            assert right.chat.completions.create(model=MODEL,
                                                 messages=HI).choices[0].message.content == "echo: hi"


def test_unknown_path_is_404(fake_openai: FakeOpenAIServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.post("/embeddings", body={"model": MODEL, "input": "x"}, cast_to=object)

    assert excinfo.value.body["code"] == "unknown_url"
    assert fake_openai.requests[0].path == "/v1/embeddings"


def test_script_errors_are_reported_not_swallowed(fake_openai: FakeOpenAIServer,
                                                  client: openai.OpenAI) -> None:
    fake_openai.script(lambda req: "not a reply")  # type: ignore[arg-type, return-value]

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=HI)

    [err] = fake_openai.errors
    assert isinstance(err, TypeError)
