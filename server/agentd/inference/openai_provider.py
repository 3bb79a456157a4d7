"""The `openai` provider: any OpenAI-compatible chat-completions endpoint (vLLM, Ollama,
llama.cpp server, OpenAI, ...) through one `openai.AsyncOpenAI` client per endpoint: its
configuration (key, headers, timeout), its HTTP client and connection pool, and its model
listing. The chat call, the hot path, builds its request and reads its stream itself on that
HTTP client (see OpenAIProvider.__init__).

Nothing is retried (the SDK's max_retries=0): whether to retry is the caller's choice, and a
hidden retry would double the latency a deadline has to cover. Upstream failures become agentd
errors with the catalogued MODEL_* reasons, so callers see clean statuses whatever the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import openai
from openai import _base_client as openai_base_client

from agentd.errors import AgentdError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from agentd.inference.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    FinishReason,
    ImageURL,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

log = logging.getLogger("agentd.inference")

# The errors of the HTTP client inside the openai SDK (recent versions ship their own copy of
# httpx, httpx2): a call that cannot connect, or a stream cut or undecodable, raises one of these.
_SDK_HTTPX = getattr(openai_base_client, "httpx2", httpx)
_SDK_TIMEOUT_ERROR = _SDK_HTTPX.TimeoutException
# What an endpoint that cannot be reached, drops the connection or answers no HTTP raises
# (aiohttp's own errors where the transport does not map them, such as a bad status line;
# TLS failures of the httpx transport).
_CONNECTION_ERRORS = (openai.APIConnectionError, httpx.RequestError, _SDK_HTTPX.RequestError,
                      aiohttp.ClientError, ssl.SSLError)

# The SDK's telemetry headers (its platform, version, retry count, read timeout): no endpoint
# needs them, and a waiting call holds each header several times over (the SDK's request,
# the transport's copy): leaving them out cut ~3 KB of an idle turn's memory.
_NO_TELEMETRY_HEADERS: dict[str, Any] = {name: openai.Omit() for name in (
    "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async")}

# Finish reasons outside the neutral three: a content filter ends the answer like "stop";
# the legacy function_call is a tool call.
_FINISH: dict[str, FinishReason] = {"stop": "stop", "tool_calls": "tool_calls", "length": "length",
                                    "function_call": "tool_calls", "content_filter": "stop"}


async def _batches(response: Any, deadline: float | None) -> AsyncIterator[list[object]]:
    """The events of a streamed chat-completions answer, cut from whole reads: a list per
    read of the dicts json.loads makes of its events' data. An event whose data carries
    `error` raises UpstreamError, [DONE] ends the stream, and the body is then read to its
    end (for the connection's reuse). `deadline` (loop time) guards each read of the body,
    never the consumer's time between reads (a timeout scope must not span a yield): one read
    brings several chunks, so fewer scopes."""
    # The raw bytes unless the endpoint compressed them (then the HTTP client's decoder).
    encoded = response.headers.get("content-encoding", "identity") not in ("identity", "")
    received = (response.aiter_bytes() if encoded else response.aiter_raw()).__aiter__()
    pending = b""
    while True:
        async with asyncio.timeout_at(deadline):
            try:
                data = await anext(received)
            except StopAsyncIteration:
                return
        pending += data
        if b"\r" in pending:
            pending = _lf_only(pending)
        *events, pending = pending.split(b"\n\n")
        # What this read brought goes on as one batch (see _merged), also when the stream
        # ends or breaks after it.
        batch: list[object] = []
        done, broken = False, None
        for event in events:
            payload = _event_data(event)
            if payload is None:
                continue
            if payload.startswith(b"[DONE]"):
                done = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError as e:
                broken = e
                break
            except RecursionError:  # nested past the parser's depth
                broken = ValueError("nested too deeply")
                break
            if isinstance(chunk, dict) and chunk.get("error"):
                broken = UpstreamError(chunk["error"])
                break
            batch.append(chunk)
        if batch:
            yield batch
        if broken is not None:
            raise broken
        if done:
            await _drain(received)
            return


class UpstreamError(Exception):
    """An error event inside the model's stream: {"error": {"message": ...}}."""

    def __init__(self, error: Any):
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message if isinstance(message, str) and message
                         else "An error occurred during streaming")


def _lf_only(buffer: bytes) -> bytes:
    """SSE lines may end in CRLF or CR; a lone CR at the end may be half of a CRLF."""
    tail = b"\r" if buffer.endswith(b"\r") else b""
    body = buffer[:-1] if tail else buffer
    return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail


def _event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its data lines joined); None for comments and keep-alives."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the usual one-line event
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


async def _drain(received: AsyncIterator[bytes]) -> None:
    """Reads what follows [DONE] to the body's end, so the connection can be reused; an
    endpoint that keeps it open gets a tenth of a second, as the SDK gives it."""
    try:
        async with asyncio.timeout(0.1):
            async for _ in received:
                pass
    except (TimeoutError, _SDK_HTTPX.RequestError, _SDK_HTTPX.StreamError):
        pass  # the answer is whole; only the connection's reuse is lost


class OpenAIProvider:
    """One OpenAI-compatible endpoint. `models` maps agentd model ids to the endpoint's names
    (ids it does not map are sent as they are)."""

    def __init__(self, provider_id: str, base_url: str, api_key: str | None = None, *,
                 models: dict[str, str] | None = None, keep_alive: bool = True,
                 field_names: dict[str, str] | None = None):
        """`field_names`: the endpoint's own names for request fields it spells its own way
        (llama.cpp's server reads repetition_penalty as repeat_penalty)."""
        self.provider_id = provider_id
        self.base_url = base_url
        self._names = dict(models or {})
        self._field_names = dict(field_names or {})
        # The SDK's aiohttp transport (the `aiohttp` extra): its C HTTP parser made a streamed
        # call cost ~0.75 ms of CPU against ~1.15 ms with the default httpx transport
        # (against the benchmark's fake model), the same requests on the wire. Without
        # keep-alive (the embedded model's server, which once dropped a reused connection)
        # httpx, whose pool can be told to keep no connection; the aiohttp transport cannot.
        http_client = (openai.DefaultAioHttpClient() if keep_alive else openai.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_keepalive_connections=0)))
        # Local servers take no key, but the SDK demands one: send a placeholder.
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0,
                                          http_client=http_client, default_headers=_NO_TELEMETRY_HEADERS)
        # The chat call goes out on the SDK client's HTTP client (its pool and transport) with
        # the SDK client's headers, key and timeout, but not through the SDK's request builder:
        # building the options, headers and URL of every call, and wrapping its response, cost
        # ~0.75 ms of CPU a call (bench/parts.py's model call: 2.0 ms through it, 1.25 without).
        self._http = http_client
        self._chat_url = _SDK_HTTPX.URL(f"{self._client.base_url}chat/completions")
        # What the HTTP client's build_request would merge into every request, merged once,
        # in the SDK's order: the key, then the SDK client's headers, which may replace it (a
        # gateway's own Authorization, from default_headers or OPENAI_CUSTOM_HEADERS).
        self._chat_headers = _SDK_HTTPX.Headers(http_client.headers)
        self._chat_headers.update({"Authorization": f"Bearer {self._client.api_key}"})
        self._chat_headers.update({name: value for name, value in self._client.default_headers.items()
                                   if not isinstance(value, openai.Omit)})
        self._default_timeout = _SDK_HTTPX.Timeout(self._client.timeout).as_dict()

    def serve(self, model_id: str, provider_model_id: str | None = None) -> None:
        """Records the endpoint's name for an agentd model id."""
        self._names[model_id] = provider_model_id or model_id

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        loop = asyncio.get_running_loop()
        deadline = None if request.timeout_s is None else loop.time() + max(request.timeout_s, 0.0)
        response = None
        finished = False
        saw_tool_calls = False
        try:
            chat_request = self._chat_request(request)
        except ValueError as e:  # a number JSON has no form for (inf, nan), given over gRPC
            raise InvalidArgument("", f"the request for model '{request.model}' cannot be sent as "
                                      f"JSON: {e}") from None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._http.send(chat_request, stream=True)
                if response.status_code >= 400:
                    message = _error_message(response.status_code, await _error_body(response))
                    raise _status_error(response.status_code, message, request.model)
            # Closed here, not left to the loop's finalizer, when the caller stops early.
            async with contextlib.aclosing(_batches(response, deadline)) as batches:
                async for batch in batches:
                    chunks, malformed = _merged(batch)
                    for chunk in chunks:
                        if chunk.tool_calls:
                            saw_tool_calls = True
                        if chunk.finish_reason is not None:
                            finished = True
                            if chunk.finish_reason == "stop" and saw_tool_calls:
                                # Some servers say "stop" after tool calls; the loops act on the calls.
                                chunk = ChatChunk(text=chunk.text, tool_calls=chunk.tool_calls,
                                                  finish_reason="tool_calls", usage=chunk.usage)
                        yield chunk
                    if malformed is not None:  # after what came before it in the same read
                        raise malformed
        except AgentdError:
            raise
        except (TimeoutError, _SDK_TIMEOUT_ERROR, httpx.TimeoutException) as e:
            if (refused := _refused(e)) is not None:
                raise self._unreachable(request.model, refused) from None
            raise DeadlineExceeded(f"Model '{request.model}' did not answer in time.",
                                   reason="MODEL_TIMEOUT") from None
        except _CONNECTION_ERRORS as e:
            raise self._unreachable(request.model, e) from None
        except UpstreamError as e:
            raise Unavailable(f"Model '{request.model}' failed: {e}", reason="MODEL_UNAVAILABLE") from None
        except MalformedChunk as e:
            raise Unavailable(f"Model '{request.model}' sent a malformed chunk: {e}",
                              reason="MODEL_UNAVAILABLE") from None
        except ValueError as e:  # a chunk that is not JSON
            raise Unavailable(f"Model '{request.model}' sent a chunk that is not JSON: {e}",
                              reason="MODEL_UNAVAILABLE") from None
        finally:
            if response is not None:
                # Closing the response drops the HTTP stream, so a cancelled or abandoned call
                # stops the upstream generation rather than letting it run on.
                await response.aclose()
        if not finished:
            raise Unavailable(f"Model '{request.model}' ended its stream without finishing.",
                              reason="MODEL_UNAVAILABLE")

    def _chat_request(self, request: ChatRequest) -> Any:
        """The HTTP request of a chat call, as the HTTP client's build_request makes it from
        the parts that never change (the URL, the merged headers): parsing and merging them
        again cost ~0.2 ms a call. Cookies an endpoint set (a load balancer's sticky session)
        go back to it, as build_request sends them."""
        timeout = (self._default_timeout if request.timeout_s is None
                   else _SDK_HTTPX.Timeout(request.timeout_s).as_dict())
        return _SDK_HTTPX.Request("POST", self._chat_url, headers=self._chat_headers,
                                  content=self._body(request), cookies=self._http.cookies or None,
                                  extensions={"timeout": timeout})

    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        """The ids GET /models answers (asked at start when no model list is configured)."""
        try:
            page = await self._client.models.list(
                timeout=timeout_s if timeout_s is not None else openai.NOT_GIVEN)
            return [m.id for m in page.data]
        except openai.APITimeoutError as e:
            if (refused := _refused(e)) is not None:
                raise self._cannot_reach(refused) from None
            raise DeadlineExceeded(f"Provider '{self.provider_id}' did not list its models in time.",
                                   reason="MODEL_TIMEOUT") from None
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (401, 403, 404, 429):
                message = _upstream_message(e.body, e.message)
                raise Unavailable(f"Provider '{self.provider_id}' cannot list its models: {message}",
                                  reason="MODEL_UNAVAILABLE") from None
            raise InvalidArgument("", _upstream_message(e.body, e.message),
                                  reason="MODEL_REJECTED_REQUEST") from None
        except _CONNECTION_ERRORS as e:
            raise self._cannot_reach(e) from None

    def _cannot_reach(self, error: BaseException) -> Unavailable:
        return Unavailable(f"Provider '{self.provider_id}' at {self.base_url} cannot be reached: "
                           f"{_cause(error)}", reason="MODEL_UNAVAILABLE")

    async def close(self) -> None:
        await self._client.close()

    # ---- translation

    def _body(self, request: ChatRequest) -> bytes:
        """The request's JSON, as the SDK would encode it. Each message is encoded once
        (ChatMessage.wire_json): in a 210-turn session, converting and encoding the history
        again cost ~0.7 ms a turn."""
        body: dict[str, Any] = {"model": self._names.get(request.model, request.model),
                                "stream": True, "stream_options": {"include_usage": True}}
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            if request.tool_choice is not None:
                body["tool_choice"] = _tool_choice(request.tool_choice)
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        elif request.tool_choice is not None and request.tool_choice not in ("auto", "none"):
            raise InvalidArgument("tool_choice",
                                  f"{request.tool_choice!r} names a tool but no tools are given")
        for name in ("temperature", "top_p", "response_format"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.max_tokens:  # never 0: that asks for an empty answer
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        # Not in the OpenAI protocol; vLLM and llama.cpp server read them from the body.
        if request.top_k is not None:
            body["top_k"] = request.top_k
        if request.repetition_penalty is not None:
            body["repetition_penalty"] = request.repetition_penalty
        for name, own in self._field_names.items():
            if name in body:
                body[own] = body.pop(name)
        messages = b",".join([m.wire_json or _message_json(m) for m in request.messages])
        return b'{"messages":[' + messages + b"]," + _json(body)[1:]

    def _unreachable(self, model: str, error: BaseException) -> Unavailable:
        return Unavailable(f"Model '{model}' is unavailable: provider '{self.provider_id}' failed "
                           f"({_cause(error)}).", reason="MODEL_UNAVAILABLE")


def _json(value: Any) -> bytes:
    """JSON as the SDK encodes a request body (openapi_dumps without its pydantic cases)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _message_json(message: ChatMessage) -> bytes:
    """Encodes a message and keeps the result on it (see ChatMessage.wire_json)."""
    object.__setattr__(message, "wire_json", _json(_message(message)))
    return message.wire_json


def _message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.role == "assistant":
        out["content"] = message.content
        if message.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in message.tool_calls]
    elif message.parts:
        out["content"] = [{"type": "text", "text": part} if isinstance(part, str) else _image(part)
                          for part in message.parts]
    else:
        out["content"] = message.content or ""
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


def _image(image: ImageURL) -> dict[str, Any]:
    url: dict[str, Any] = {"url": image.url}
    if image.detail:
        url["detail"] = image.detail
    return {"type": "image_url", "image_url": url}


def _tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


class MalformedChunk(ValueError):
    """A chunk that is JSON but not a chat.completion.chunk: the model's fault, as a chunk
    that is not JSON (UNAVAILABLE), never agentd's."""


def _chunk(raw: Any) -> ChatChunk | None:
    """A streamed chat.completion.chunk, as the JSON object the endpoint sent. The shapes
    agentd reads are checked: a wrong one raises MalformedChunk."""
    if not isinstance(raw, dict):
        raise MalformedChunk(f"a chunk is {_kind(raw)}, not an object")
    usage = None
    u = raw.get("usage")
    if u is not None:
        if not isinstance(u, dict):
            raise MalformedChunk(f"usage is {_kind(u)}")
        prompt, completion = _count(u, "prompt_tokens"), _count(u, "completion_tokens")
        usage = Usage(input_tokens=prompt, output_tokens=completion,
                      total_tokens=_count(u, "total_tokens") or prompt + completion)
    text, calls, finish = "", (), None
    choices = raw.get("choices")
    if choices:
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise MalformedChunk("choices is not a list of objects")
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            if not isinstance(delta, dict):
                raise MalformedChunk(f"delta is {_kind(delta)}")
            text = _text(delta.get("content"), "content")
            pieces = delta.get("tool_calls")
            if pieces:
                if not isinstance(pieces, list):
                    raise MalformedChunk(f"tool_calls is {_kind(pieces)}")
                calls = tuple(_tool_call_delta(c) for c in pieces)
        reason = choice.get("finish_reason")
        if reason:
            if not isinstance(reason, str):
                raise MalformedChunk(f"finish_reason is {_kind(reason)}")
            finish = _FINISH.get(reason, "stop")
    if not text and not calls and finish is None and usage is None:
        return None  # the role chunk, keep-alives
    return ChatChunk(text=text, tool_calls=calls, finish_reason=finish, usage=usage)


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise MalformedChunk(f"usage.{key} is not a token count")
    return value


def _text(value: Any, what: str) -> str:
    """A string of the chunk as text agentd can store: a UTF-16 surrogate JSON escaped alone
    (half of a character split across two chunks) becomes U+FFFD, as a decoder does with a
    broken byte sequence; a pair in the same string is the character."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedChunk(f"{what} is {_kind(value)}, not a string")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _merged(batch: list[Any]) -> tuple[list[ChatChunk], MalformedChunk | None]:
    """The chunks of one read, consecutive pieces of the same text or of the same tool call's
    arguments joined into one. What arrived together goes on together: nothing waits for
    more, so a model streaming slower than agentd forwards keeps one event per chunk, while
    chunks that queued up (a fast model, a busy replica) cost one event each no longer.
    A malformed chunk ends the batch: the chunks before it, and what was wrong."""
    merged: list[ChatChunk] = []
    for raw in batch:
        try:
            chunk = _chunk(raw)
        except MalformedChunk as e:
            return merged, e
        if chunk is None:
            continue
        last = merged[-1] if merged else None
        if last is not None and _pieces(last) and _pieces(chunk):
            if chunk.text and not last.tool_calls:
                merged[-1] = ChatChunk(text=last.text + chunk.text)
                continue
            if chunk.tool_calls and not last.text:
                before, after = last.tool_calls[-1], chunk.tool_calls[0]
                if len(chunk.tool_calls) == 1 and after.index == before.index and after.id is None \
                        and after.name is None:
                    joined = ToolCallDelta(index=before.index, id=before.id, name=before.name,
                                           arguments=before.arguments + after.arguments)
                    merged[-1] = ChatChunk(tool_calls=(*last.tool_calls[:-1], joined))
                    continue
        merged.append(chunk)
    return merged, None


def _pieces(chunk: ChatChunk) -> bool:
    """Only a text piece or only tool-call pieces: no finish reason, no usage."""
    return chunk.finish_reason is None and chunk.usage is None and not (chunk.text and chunk.tool_calls)


def _tool_call_delta(call: Any) -> ToolCallDelta:
    if not isinstance(call, dict):
        raise MalformedChunk(f"a tool call is {_kind(call)}, not an object")
    function = call.get("function") or {}
    index = call.get("index") or 0
    if not isinstance(function, dict) or not isinstance(index, int) or isinstance(index, bool):
        raise MalformedChunk("a tool call's function or index has the wrong type")
    return ToolCallDelta(index=index, id=_text(call.get("id"), "a tool call's id") or None,
                         name=_text(function.get("name"), "a tool call's name") or None,
                         arguments=_text(function.get("arguments"), "a tool call's arguments"))


def _status_error(status: int, message: str, model: str) -> AgentdError:
    if status == 404:
        return NotFound("model", model)
    if status == 408:
        return DeadlineExceeded(f"Model '{model}' did not answer in time: {message}", reason="MODEL_TIMEOUT")
    if status == 429:
        # Still UNAVAILABLE (retry later), with a reason of its own so that a client can back
        # off: OpenAI's rate_limit_exceeded in a failed response.
        return Unavailable(f"Model '{model}' is rate limited (HTTP 429): {message}",
                           reason="MODEL_RATE_LIMITED")
    if status >= 500 or status in (401, 403):
        # Not the caller's fault: the provider is down, overloaded, or refuses agentd's own
        # credentials; retrying later (or fixing the configuration) is the remedy.
        return Unavailable(f"Model '{model}' is unavailable (HTTP {status}): {message}",
                           reason="MODEL_UNAVAILABLE")
    return InvalidArgument("", f"Model '{model}' rejected the request: {message}",
                           reason="MODEL_REJECTED_REQUEST")


async def _error_body(response: Any, limit: int = 64 * 1024) -> bytes:
    """The body of an error response, its first `limit` bytes: an error is a short object, and
    an endpoint that streams a long page instead gets no more of agentd's memory."""
    body = b""
    async for data in response.aiter_bytes():
        body += data
        if len(body) >= limit:
            break
    return body[:limit]


def _error_message(status: int, content: bytes) -> str:
    """The message of an error response, found where the SDK finds it (APIStatusError); a
    body without one (a proxy's page, another server's JSON) is quoted, its first 300
    characters."""
    text = content.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    # Where there is no message field (TGI's {"error": "..."}, FastAPI's {"detail": [...]}),
    # the body itself says what went wrong.
    return _upstream_message(body, f"Error code: {status}" + (f" - {text[:300]}" if text else ""))


def _upstream_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return fallback


def _refused(error: BaseException) -> aiohttp.ClientConnectorError | None:
    """The refused or failed connect that a "timeout" in fact is: the aiohttp transport
    reports aiohttp's ClientConnectorError as httpx's ConnectTimeout (its exception map picks
    the entry of the base class ClientConnectionError first), but the endpoint is down, not
    slow."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause):
        return f"{error.__class__.__name__}: {cause}"
    return f"{error.__class__.__name__}: {error}" if str(error) else error.__class__.__name__
