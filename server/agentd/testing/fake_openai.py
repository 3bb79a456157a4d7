"""A fake model server speaking the OpenAI chat-completions protocol, scripted per test.

Part of the shipped test kit (as Temporal ships its test server): agentd's tests, its
benchmark and anyone testing a client against agentd run a real model endpoint without a
model. Tests of agentd fake only what is outside agentd, and only at the wire: agentd's own
HTTP client, SSE parsing, retries and error mapping run for real against this server. By
default it answers at once (no artificial delay), so a benchmark measures agentd, not it.

    with FakeOpenAIServer() as fake:                  # tests: the ``fake_openai`` fixture
        fake.script(Reply(text="Hello"),
                    Reply(tool_calls=[ToolCallSpec("get_weather", '{"city":"Paris"}')]))
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test")
        ...
        assert fake.chat_requests[0].messages[-1]["content"] == "hi"

Each chat-completions request consumes the next scripted reply; with none left the
default reply answers (an echo of the last user message unless configured).

It is a stdlib ``ThreadingHTTPServer`` on a background thread, so it needs no event
loop and serves sync and async clients from any test alike (the pytest fixture lives in
tests/fakes/openai_server.py, so the kit needs nothing beyond the stdlib).
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "CHAT_PATH",
    "FakeOpenAIServer",
    "RecordedRequest",
    "Reply",
    "ReplySource",
    "ToolCallSpec",
    "Usage",
    "echo_reply",
]

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

# How often blocked handlers look at the stop flag and the client socket: short enough
# that close() and client disconnects are noticed at once, long enough not to spin.
_POLL_SECONDS = 0.02
# close() waits at most this long for handler threads; they are daemons either way.
_JOIN_SECONDS = 2.0

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class ToolCallSpec:
    """One tool call the model makes; ``arguments`` is the JSON text (a mapping is dumped)."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None  # None: a fresh "call_..." id

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class Usage:
    """Token counts to report; a field left None is computed (words of prompt/output)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None  # None: prompt + completion
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one chat-completions request.

    Streaming: the role chunk, ``text`` in deltas of ``chunk_size`` characters, each tool
    call's head (id, name) then its arguments in ``chunk_size`` pieces, the finish chunk,
    the usage chunk (when the client asked for it), then ``data: [DONE]``. "Chunk N"
    below counts those SSE events from 0, ``[DONE]`` included.
    """

    text: str | None = None
    tool_calls: Sequence[ToolCallSpec] = ()
    finish_reason: str | None = None  # None: "tool_calls" if there are any, else "stop"
    usage: Usage | Mapping[str, int] | None = None
    chunk_size: int = 4
    # Real servers stream parallel calls one after the other; interleaving them checks
    # that a client really reassembles by index.
    interleave_tool_calls: bool = False
    delay: float = 0.0  # seconds before the first byte of the response
    chunk_delay: float = 0.0  # seconds between two SSE events
    # Every SSE event in one write, as a model that ran ahead of its reader: the client
    # finds them all in one read. Not with chunk_delay, hang_after_chunks or disconnect_after_chunks.
    burst: bool = False
    error_status: int | None = None  # answer this HTTP status with an OpenAI error body
    error_message: str | None = None
    error_type: str | None = None  # None: derived from the status
    error_code: str | None = None
    error_param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # extra response headers
    hang: bool = False  # never answer; give up only when the client does or on close()
    # Streamed: stall (hang) or drop the connection just before chunk N. A non-streamed
    # reply has no chunks, so either one acts before the response.
    hang_after_chunks: int | None = None
    disconnect_after_chunks: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if isinstance(self.usage, Mapping):
            object.__setattr__(self, "usage", Usage(**self.usage))
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.delay < 0 or self.chunk_delay < 0:
            raise ValueError("delays must be >= 0")
        if self.burst and (self.chunk_delay or self.hang_after_chunks is not None
                           or self.disconnect_after_chunks is not None):
            raise ValueError("burst sends every event at once: no chunk_delay, hang or disconnect")
        if self.error_status is not None and not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be a 4xx or 5xx status")


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # names lower-cased
    raw_body: bytes
    body: Any  # the parsed JSON, None when absent or not JSON
    received_at: float = field(default_factory=time.monotonic)
    status: int | None = None  # the status sent; None while pending or if never answered
    reply: Reply | None = None  # the reply used, for chat requests that got one
    # time.monotonic() at which each SSE event (or the one JSON body) was written: lets a
    # test order the server's sends against what a client saw, without sleeping.
    sent_at: list[float] = field(default_factory=list)
    # Set once the fake is done with the request (answered, dropped or abandoned): lets a
    # test tell whether the server was still streaming when the client saw a chunk.
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def _field(self, name: str) -> Any:
        return self.body.get(name) if isinstance(self.body, dict) else None

    @property
    def model(self) -> Any:
        return self._field("model")

    @property
    def messages(self) -> Any:
        return self._field("messages")

    @property
    def tools(self) -> Any:
        return self._field("tools")

    @property
    def stream(self) -> bool:
        return self._field("stream") is True


ReplySource = Reply | Callable[[RecordedRequest], Reply]


def _content_text(content: Any) -> str:
    """The text of a message's content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def echo_reply(request: RecordedRequest) -> Reply:
    """The default reply: "echo: " and the text of the last user message."""
    messages = request.messages if isinstance(request.messages, list) else []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return Reply(text="echo: " + (_content_text(users[-1].get("content")) if users else ""))


# --------------------------------------------------------------------------- protocol


class _ApiError(Exception):
    """An error the fake answers with the OpenAI error body."""

    def __init__(
        self, status: int, message: str, *, type: str | None = None, param: str | None = None,
        code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _error_type(status)


def _error_type(status: int) -> str:
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error_body(err: _ApiError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


class _Drop(Exception):
    """Stop answering and drop the connection: the client left, the reply says so, or
    the server is closing."""


def _words(text: str) -> int:
    return len(text.split())


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _prompt_words(body: dict[str, Any]) -> int:
    total = 0
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        total += _words(_content_text(m.get("content")))
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                total += _words(str(fn.get("name", ""))) + _words(str(fn.get("arguments", "")))
    return total


def _bad(message: str, param: str | None = None, code: str | None = None) -> _ApiError:
    return _ApiError(400, message, param=param, code=code)


def _validate_chat(body: Any, models: Sequence[str] | None, strict: bool) -> None:
    """Reject what the real service rejects, where that is cheap to check."""
    if not isinstance(body, dict):
        raise _bad("We could not parse the JSON body of your request. The body must be a JSON object.")
    if "model" not in body:
        raise _bad("you must provide a model parameter")
    if not isinstance(body["model"], str):
        raise _bad("Invalid type for 'model': expected a string.", "model", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _bad("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise _bad("Invalid 'messages': empty array. Expected minimum length 1.", "messages", "empty_array")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise _bad(f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role", "invalid_value")
    if models is not None and body["model"] not in models:
        message = f"The model `{body['model']}` does not exist or you do not have access to it."
        raise _ApiError(404, message, code="model_not_found")
    if strict:
        _validate_strict(body)


def _validate_strict(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    if body.get("stream_options") is not None and stream is not True:
        raise _bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                   "stream_options")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            message = (f"Invalid '{name}': integer below minimum value. "
                       f"Expected a value >= 1, but got {value!r}.")
            raise _bad(message, name, "integer_below_min_value")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
        message = f"Invalid 'temperature': expected a number in [0, 2], got {temperature!r}."
        raise _bad(message, "temperature", "invalid_value")
    for i, tool in enumerate(body.get("tools") or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" or not isinstance(fn.get("name"), str):
            raise _bad(f"Invalid 'tools[{i}]': expected a function tool with a name.", f"tools[{i}]",
                       "invalid_value")
    for i, m in enumerate(body["messages"]):
        _validate_content(m, i)
    _validate_tool_sequence(body["messages"])


def _validate_content(message: dict[str, Any], index: int) -> None:
    """Content is a string or a list of parts: text parts, and image_url parts in user
    messages only (the service's rule)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    where = f"messages[{index}].content"
    if not isinstance(content, list):
        raise _bad(f"Invalid type for '{where}': expected one of a string or array of objects.", where,
                   "invalid_type")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        image = part.get("image_url") if kind == "image_url" else None
        if isinstance(image, dict) and isinstance(image.get("url"), str) \
                and image.get("detail", "auto") in ("auto", "low", "high", "original"):
            if message.get("role") != "user":
                raise _bad(f"Invalid '{where}[{j}]': image_url parts are only allowed in user messages.",
                           f"{where}[{j}]", "invalid_value")
            continue
        raise _bad(f"Invalid value for '{where}[{j}]'.", f"{where}[{j}]", "invalid_value")


def _validate_tool_sequence(messages: list[dict[str, Any]]) -> None:
    # The service demands that every tool call of an assistant message is answered by
    # tool messages right after it, and that tool messages answer nothing else.
    unanswered: list[str] = []
    answerable: set[str] = set()
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in answerable:
                message = (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message"
                    " with 'tool_calls'."
                )
                raise _bad(message, f"messages.[{i}].role")
            if call_id in unanswered:
                unanswered.remove(call_id)
            continue
        if unanswered:
            break
        calls = m.get("tool_calls") if m["role"] == "assistant" else None
        ids = [c.get("id") for c in calls or [] if isinstance(c, dict)]
        unanswered, answerable = list(ids), set(ids)
    if unanswered:
        message = (
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each"
            " 'tool_call_id'. The following tool_call_ids did not have response messages: "
            + ", ".join(map(str, unanswered))
        )
        raise _bad(message, "messages")


class _Completion:
    """Renders one Reply as a chat.completion or as its chat.completion.chunk events."""

    def __init__(self, reply: Reply, body: dict[str, Any]) -> None:
        self.reply = reply
        self.model = body["model"]
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.calls = [(c.id or "call_" + uuid.uuid4().hex[:24], c.name, c.arguments_json())
                      for c in reply.tool_calls]
        self.finish_reason = reply.finish_reason or ("tool_calls" if self.calls else "stop")
        self.usage = self._usage(body)

    def _usage(self, body: dict[str, Any]) -> dict[str, Any]:
        given = self.reply.usage if isinstance(self.reply.usage, Usage) else Usage()
        prompt = given.prompt_tokens if given.prompt_tokens is not None else _prompt_words(body)
        completion = given.completion_tokens
        if completion is None:
            completion = _words(self.reply.text or "")
            completion += sum(_words(name) + _words(args) for _, name, args in self.calls)
        total = given.total_tokens if given.total_tokens is not None else prompt + completion
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": given.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": given.reasoning_tokens, "audio_tokens": 0},
        }

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
        }

    def message(self) -> dict[str, Any]:
        text = self.reply.text
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text is not None else (None if self.calls else ""),
            "refusal": None,
            "annotations": [],
        }
        if self.calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in self.calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return {**self._envelope("chat.completion"), "choices": [choice], "usage": self.usage}

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            out = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
            if include_usage:  # as the service does: null on every chunk but the last
                out["usage"] = None
            return out

        size = self.reply.chunk_size
        text = self.reply.text
        # Like the service: content "" opens a text answer, null a tool-calls-only one.
        first = "" if text is not None or not self.calls else None
        out = [chunk({"role": "assistant", "content": first, "refusal": None})]
        out += [chunk({"content": piece}) for piece in _split(text or "", size)]
        per_call = [
            [{"index": i, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}]
            + [{"index": i, "function": {"arguments": piece}} for piece in _split(args, size)]
            for i, (cid, name, args) in enumerate(self.calls)
        ]
        if self.reply.interleave_tool_calls:
            longest = max((len(seq) for seq in per_call), default=0)
            fragments = [seq[k] for k in range(longest) for seq in per_call if k < len(seq)]
        else:
            fragments = [frag for seq in per_call for frag in seq]
        out += [chunk({"tool_calls": [frag]}) for frag in fragments]
        out.append(chunk({}, self.finish_reason))
        if include_usage:
            out.append({**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage})
        return out


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # close() joins handler threads itself, with a bound; the stdlib join has none.
    block_on_close = False
    request_queue_size = 1024  # tests and the benchmark fire many concurrent requests
    fake: FakeOpenAIServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        # Tracked here, on the accept loop, so close() can cut every accepted connection,
        # even one whose handler thread has not started running yet.
        self.fake._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.fake._untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up is routine in these tests, not worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, as the SDKs expect
    server_version = "fake-openai"
    sys_version = ""
    disable_nagle_algorithm = True  # SSE events must leave at once, not be coalesced
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, threading.current_thread())

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests assert on fake.requests, not on a log

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # ---- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise _Drop from exc

    def _start(self, rec: RecordedRequest, status: int, content_type: str,
               headers: Mapping[str, str]) -> None:
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex)
        for name, value in headers.items():
            self.send_header(name, value)

    def _send_json(
        self, rec: RecordedRequest, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self._start(rec, status, "application/json", headers or {})
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()  # flushes the status line and headers
        self._write(data)
        rec.sent_at.append(time.monotonic())

    def _pause(self, seconds: float) -> None:
        if seconds and self.server.fake._stopping.wait(seconds):
            raise _Drop  # the server is closing

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _hang(self) -> None:
        while not self.server.fake._stopping.wait(_POLL_SECONDS):
            if self._client_gone():
                break
        raise _Drop

    def _abort(self) -> None:
        # A graceful FIN, not a RST: the client keeps what it already received and then
        # sees the body end early (an incomplete chunked read), as with a dying server.
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- routing

    def _dispatch(self) -> None:
        fake = self.server.fake
        path, _, query = self.path.partition("?")
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        rec = RecordedRequest(self.command, path, query, headers, raw_body=raw, body=body)
        fake._record(rec)
        try:
            try:
                self._route(rec)
            except _ApiError as err:
                self._send_json(rec, err.status, _error_body(err))
        except _Drop:
            self._abort()
        except Exception as exc:  # noqa: BLE001 - a broken script or fake: tell the test, drop the request
            fake.errors.append(exc)
            self._abort()
        finally:
            rec.done.set()

    def _route(self, rec: RecordedRequest) -> None:
        fake = self.server.fake
        if fake.api_key is not None and rec.headers.get("authorization") != f"Bearer {fake.api_key}":
            raise _ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        if rec.path == CHAT_PATH:
            self._require_method(rec, "POST")
            self._chat(rec)
        elif rec.path == MODELS_PATH:
            self._require_method(rec, "GET")
            self._send_json(rec, 200, {"object": "list", "data": [_model(m) for m in fake.models or []]})
        elif rec.path.startswith(MODELS_PATH + "/"):
            self._require_method(rec, "GET")
            model_id = rec.path[len(MODELS_PATH) + 1 :]
            if model_id not in (fake.models or []):
                raise _ApiError(404, f"The model '{model_id}' does not exist", param="model",
                                code="model_not_found")
            self._send_json(rec, 200, _model(model_id))
        else:
            raise _ApiError(404, f"Invalid URL ({rec.method} {rec.path})", code="unknown_url")

    def _require_method(self, rec: RecordedRequest, method: str) -> None:
        if rec.method != method:
            raise _ApiError(405, f"Method {rec.method} not allowed for {rec.path}", code="method_not_allowed")

    def _chat(self, rec: RecordedRequest) -> None:
        fake = self.server.fake
        _validate_chat(rec.body, fake.models, fake.strict)
        reply = fake._next_reply(rec)
        rec.reply = reply
        self._pause(reply.delay)
        if reply.hang:
            self._hang()
        if reply.error_status is not None:
            message = reply.error_message or f"fake error {reply.error_status}"
            err = _ApiError(
                reply.error_status, message, type=reply.error_type, param=reply.error_param,
                code=reply.error_code
            )
            self._send_json(rec, err.status, _error_body(err), reply.headers)
            return
        completion = _Completion(reply, rec.body)
        if not rec.stream:
            if reply.hang_after_chunks is not None:
                self._hang()
            if reply.disconnect_after_chunks is not None:
                raise _Drop
            self._send_json(rec, 200, completion.message(), reply.headers)
            return
        options = rec.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = [f"data: {json.dumps(c)}\n\n" for c in completion.chunks(include_usage)]
        events.append("data: [DONE]\n\n")
        self._start(rec, 200, "text/event-stream; charset=utf-8", reply.headers)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if reply.burst:
            events = ["".join(events)]
        for i, event in enumerate(events):
            if i == reply.disconnect_after_chunks:
                raise _Drop
            if i == reply.hang_after_chunks:
                self._hang()
            if i:
                self._pause(reply.chunk_delay)
            data = event.encode()
            # One write per event (size line, data, CRLF) so each leaves as one segment.
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
            rec.sent_at.append(time.monotonic())
        self._write(b"0\r\n\r\n")


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "fake-openai"}


# --------------------------------------------------------------------------- public


class FakeOpenAIServer:
    """The fake model server. Start it with ``with`` (or start()/close()).

    models:       ids served by GET /v1/models; when set, chat requests for any other
                  model get 404 model_not_found. None: every model is accepted.
    api_key:      when set, requests must carry "Authorization: Bearer <api_key>".
    default_reply: answers chat requests when the script is empty (echo_reply).
    strict:       also reject what the service rejects beyond missing fields: max_tokens
                  < 1, temperature out of range, malformed tools, unanswered tool calls.
    """

    def __init__(
        self,
        *,
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        default_reply: ReplySource = echo_reply,
        strict: bool = True,
    ) -> None:
        self.models = list(models) if models is not None else None
        self.api_key = api_key
        self.strict = strict
        self.errors: list[BaseException] = []  # exceptions raised inside the fake
        self._initial_default = default_reply
        self._default: ReplySource = default_reply
        self._script: deque[ReplySource] = deque()
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        # Open connections, and the handler thread serving each once it has started.
        self._connections: dict[socket.socket, threading.Thread | None] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> FakeOpenAIServer:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _POLL_SECONDS}, name="fake-openai",
            daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop at once: pending delays, hangs and idle keep-alive connections are cut."""
        server, thread = self._server, self._thread
        if server is None or thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        server.shutdown()
        with self._cond:
            connections = dict(self._connections)
        for conn in connections:  # wakes handlers blocked reading the next request
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        deadline = time.monotonic() + _JOIN_SECONDS
        for handler in connections.values():
            if handler is not None:
                handler.join(max(0.0, deadline - time.monotonic()))
        thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return self.url + "/v1"

    # ---- scripting

    def script(self, *replies: ReplySource) -> None:
        """Queue replies, one per chat-completions request, in order.

        A callable gets the RecordedRequest and returns the Reply, for answers that
        depend on what was asked.
        """
        with self._cond:
            self._script.extend(replies)

    def set_default_reply(self, reply: ReplySource) -> None:
        with self._cond:
            self._default = reply

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        with self._cond:
            return len(self._script)

    def reset(self) -> None:
        """Forget the script, the recorded requests, errors and a changed default reply."""
        with self._cond:
            self._script.clear()
            self._requests.clear()
            self.errors.clear()
            self._default = self._initial_default

    # ---- recording

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a snapshot)."""
        with self._cond:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == CHAT_PATH]

    def wait_for_requests(
        self, count: int, *, path: str | None = CHAT_PATH, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Block until ``count`` requests (to ``path``; None: any) have arrived."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(f"{len(matching())} of {count} requests arrived within {timeout}s")
            return matching()

    # ---- called by handler threads

    def _record(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()

    def _next_reply(self, rec: RecordedRequest) -> Reply:
        with self._cond:
            source = self._script.popleft() if self._script else self._default
        reply = source(rec) if callable(source) else source
        if not isinstance(reply, Reply):
            raise TypeError(f"a reply source returned {reply!r}, not a Reply")
        return reply

    def _track(self, conn: socket.socket, handler: threading.Thread | None = None) -> None:
        with self._cond:
            self._connections[conn] = handler

    def _untrack(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.pop(conn, None)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentd.testing.fake_openai``: serve until SIGTERM/SIGINT, in a process of
    its own (a benchmark keeps the fake's CPU out of the load generator's). Prints the base
    URL on the first line of stdout once it accepts connections. Every chat request gets
    --text, except for the --hang-model models, which never answer (idle open turns)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m agentd.testing.fake_openai", description=main.__doc__)
    parser.add_argument("--text", default="Hello from the fake model.",
                        help="the reply to every chat request")
    parser.add_argument("--chunk-size", type=int, default=8, help="characters per streamed text delta")
    parser.add_argument("--chunk-delay", type=float, default=0.0,
                        help="seconds between two streamed events (a model generating at its pace)")
    parser.add_argument("--hang-model", action="append", default=[], help="a model whose replies never come")
    args = parser.parse_args(argv)
    answer = Reply(text=args.text, chunk_size=args.chunk_size, chunk_delay=args.chunk_delay)
    hang = Reply(hang=True)
    hanging = frozenset(args.hang_model)

    def reply(request: RecordedRequest) -> Reply:
        return hang if request.model in hanging else answer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Record nothing: a long run would keep every request in memory.
    with _Unrecorded(default_reply=reply, strict=False) as fake:
        print(fake.base_url, flush=True)
        stop.wait()
    return 0


class _Unrecorded(FakeOpenAIServer):
    """The fake as a long-running server: requests are answered but not kept."""

    def _record(self, rec: RecordedRequest) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
