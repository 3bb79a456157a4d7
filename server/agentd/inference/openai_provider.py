"""The `openai` provider: any OpenAI-compatible chat-completions endpoint (vLLM, Ollama,
llama.cpp server, OpenAI, ...) through one `openai.AsyncOpenAI` client per endpoint.

The SDK never retries (max_retries=0): whether to retry is the caller's choice, and a hidden
retry would double the latency a deadline has to cover. Upstream failures become agentd errors
with the catalogued MODEL_* reasons, so callers see clean statuses whatever the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
from openai import _base_client as openai_base_client

from agentd.errors import AgentdError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from agentd.inference.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    FinishReason,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

log = logging.getLogger("agentd.inference")

# The transport errors of the HTTP client inside the openai SDK (recent versions ship their
# own copy of httpx, httpx2): a stream cut while it is read raises one of these.
_SDK_TRANSPORT_ERROR = getattr(openai_base_client, "httpx2", httpx).TransportError

# Finish reasons outside the neutral three: a content filter ends the answer like "stop";
# the legacy function_call is a tool call.
_FINISH: dict[str, FinishReason] = {"stop": "stop", "tool_calls": "tool_calls", "length": "length",
                                    "function_call": "tool_calls", "content_filter": "stop"}


class OpenAIProvider:
    """One OpenAI-compatible endpoint. `models` maps agentd model ids to the endpoint's names
    (ids it does not map are sent as they are)."""

    def __init__(self, provider_id: str, base_url: str, api_key: str | None = None, *,
                 models: dict[str, str] | None = None):
        self.provider_id = provider_id
        self.base_url = base_url
        self._names = dict(models or {})
        # Local servers take no key, but the SDK demands one: send a placeholder.
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0)

    def serve(self, model_id: str, provider_model_id: str | None = None) -> None:
        """Records the endpoint's name for an agentd model id."""
        self._names[model_id] = provider_model_id or model_id

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        loop = asyncio.get_running_loop()
        deadline = None if request.timeout_s is None else loop.time() + max(request.timeout_s, 0.0)
        stream = None
        finished = False
        saw_tool_calls = False
        try:
            async with asyncio.timeout_at(deadline):
                # The body goes in extra_body, which the SDK sends as it is: its typed params
                # are transformed field by field against the TypedDicts, which cost ~0.5 ms
                # per history message (a 100-message session spent ~25 ms of CPU a turn in it,
                # measured with the turn benchmark). The JSON on the wire is the same.
                body = self._body(request)
                # The raw response: the SDK still sends the request and maps its errors, but
                # the chunks are read as plain JSON (_sse_data), not built into its pydantic
                # models (~55 us a chunk, ~0.8 ms of CPU for a short answer).
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=body.pop("model"), messages=[], stream=True,
                    stream_options={"include_usage": True}, extra_body=body,
                    timeout=request.timeout_s if request.timeout_s is not None else openai.NOT_GIVEN)
                stream = raw.http_response
            events = _sse_data(stream.aiter_lines())
            while True:
                # The deadline guards each read, never the consumer's time between chunks:
                # a timeout scope must not span a yield.
                async with asyncio.timeout_at(deadline):
                    try:
                        data = await anext(events)
                    except StopAsyncIteration:
                        break
                if isinstance(data, dict) and data.get("error"):
                    error = data["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    raise Unavailable(f"Model '{request.model}' failed: "
                                      f"{message or 'an error occurred during streaming'}",
                                      reason="MODEL_UNAVAILABLE")
                chunk = _chunk(data) if isinstance(data, dict) else None
                if chunk is None:
                    continue
                if chunk.tool_calls:
                    saw_tool_calls = True
                if chunk.finish_reason is not None:
                    finished = True
                    if chunk.finish_reason == "stop" and saw_tool_calls:
                        # Some servers say "stop" after tool calls; the loops act on the calls.
                        chunk = ChatChunk(text=chunk.text, tool_calls=chunk.tool_calls,
                                          finish_reason="tool_calls", usage=chunk.usage)
                yield chunk
        except AgentdError:
            raise
        except (TimeoutError, openai.APITimeoutError, httpx.TimeoutException):
            raise DeadlineExceeded(f"Model '{request.model}' did not answer in time.",
                                   reason="MODEL_TIMEOUT") from None
        except openai.APIStatusError as e:
            raise _status_error(e, request.model) from None
        except (openai.APIConnectionError, httpx.TransportError, _SDK_TRANSPORT_ERROR) as e:
            raise self._unreachable(request.model, e) from None
        except openai.APIError as e:
            raise Unavailable(f"Model '{request.model}' failed: {e.message}",
                              reason="MODEL_UNAVAILABLE") from None
        except ValueError as e:  # a chunk that is not JSON
            raise Unavailable(f"Model '{request.model}' sent a chunk that is not JSON: {e}",
                              reason="MODEL_UNAVAILABLE") from None
        finally:
            if stream is not None:
                # Closing the response drops the HTTP stream, so a cancelled or abandoned call
                # stops the upstream generation rather than letting it run on.
                await stream.aclose()
        if not finished:
            raise Unavailable(f"Model '{request.model}' ended its stream without finishing.",
                              reason="MODEL_UNAVAILABLE")

    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        """The ids GET /models answers (asked at start when no model list is configured)."""
        try:
            page = await self._client.models.list(
                timeout=timeout_s if timeout_s is not None else openai.NOT_GIVEN)
            return [m.id for m in page.data]
        except openai.APITimeoutError:
            raise DeadlineExceeded(f"Provider '{self.provider_id}' did not list its models in time.",
                                   reason="MODEL_TIMEOUT") from None
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (401, 403, 404, 429):
                raise Unavailable(f"Provider '{self.provider_id}' cannot list its models: "
                                  f"{_upstream_message(e)}", reason="MODEL_UNAVAILABLE") from None
            raise InvalidArgument("", _upstream_message(e), reason="MODEL_REJECTED_REQUEST") from None
        except (openai.APIConnectionError, httpx.TransportError) as e:
            raise Unavailable(f"Provider '{self.provider_id}' at {self.base_url} cannot be reached: "
                              f"{_cause(e)}", reason="MODEL_UNAVAILABLE") from None

    async def close(self) -> None:
        await self._client.close()

    # ---- translation

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._names.get(request.model, request.model),
                                "messages": [_message(m) for m in request.messages]}
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
        return body

    def _unreachable(self, model: str, error: BaseException) -> Unavailable:
        return Unavailable(f"Model '{model}' is unavailable: provider '{self.provider_id}' failed "
                           f"({_cause(error)}).", reason="MODEL_UNAVAILABLE")


def _message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.role == "assistant":
        out["content"] = message.content
        if message.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in message.tool_calls]
    else:
        out["content"] = message.content or ""
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


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


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[Any]:
    """The JSON data of each Server-Sent Event until [DONE] (data lines joined per event;
    event names, ids and comments are not used by chat streams). What follows [DONE] is read
    to the end of the body, so the HTTP/1.1 connection goes back to the pool: a connection
    closed early costs the next call a new TCP connection."""
    data: list[str] = []
    done = False
    async for line in lines:
        if done:
            continue
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif not line and data:
            text = "\n".join(data)
            data.clear()
            done = text.startswith("[DONE]")
            if not done:
                yield json.loads(text)
    if data and not done and not data[0].startswith("[DONE]"):
        yield json.loads("\n".join(data))


def _chunk(raw: dict[str, Any]) -> ChatChunk | None:
    """The neutral chunk of one chat.completion.chunk object (as JSON)."""
    usage = None
    u = raw.get("usage")
    if isinstance(u, dict):
        prompt, completion = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
        usage = Usage(input_tokens=prompt, output_tokens=completion,
                      total_tokens=u.get("total_tokens") or prompt + completion)
    text, calls, finish = "", (), None
    choices = raw.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content") or ""
            calls = tuple(_call_delta(c) for c in delta.get("tool_calls") or ())
        if choice.get("finish_reason"):
            finish = _FINISH.get(choice["finish_reason"], "stop")
    if not text and not calls and finish is None and usage is None:
        return None  # the role chunk, keep-alives
    return ChatChunk(text=text, tool_calls=calls, finish_reason=finish, usage=usage)


def _call_delta(piece: dict[str, Any]) -> ToolCallDelta:
    function = piece.get("function") or {}
    return ToolCallDelta(index=piece.get("index") or 0, id=piece.get("id") or None,
                         name=function.get("name") or None, arguments=function.get("arguments") or "")


def _status_error(error: openai.APIStatusError, model: str) -> AgentdError:
    status = error.status_code
    message = _upstream_message(error)
    if status == 404:
        return NotFound("model", model)
    if status == 408:
        return DeadlineExceeded(f"Model '{model}' did not answer in time: {message}", reason="MODEL_TIMEOUT")
    if status >= 500 or status in (401, 403, 429):
        # Not the caller's fault: the provider is down, overloaded, or refuses agentd's own
        # credentials; retrying later (or fixing the configuration) is the remedy.
        return Unavailable(f"Model '{model}' is unavailable (HTTP {status}): {message}",
                           reason="MODEL_UNAVAILABLE")
    return InvalidArgument("", f"Model '{model}' rejected the request: {message}",
                           reason="MODEL_REJECTED_REQUEST")


def _upstream_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return error.message


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause):
        return f"{error.__class__.__name__}: {cause}"
    return f"{error.__class__.__name__}: {error}" if str(error) else error.__class__.__name__
