"""The provider-neutral chat model: what the turn and response loops send to any provider and
the chunks they get back. Providers translate it to their wire protocol; the loops never
branch on a provider's type.

Also the pure conversions from the Agents API's SamplingParams and AgentResponseFormat, with
the reference's bugs fixed (greedy -> temperature 0, max_tokens 0 never sent, top_k kept,
json_schema converted to the OpenAI form).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agentd import codec
from agentd.errors import InvalidArgument
from agentd.v1 import agent_resources_pb2 as pb

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "tool_calls", "length"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call in an assistant message; `arguments` is the JSON text as the model
    wrote it (it may not parse: the loops report that as parse_status)."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True, slots=True)
class ImageURL:
    """An image in a user message: an http(s) URL or a data: URL, and the detail asked for
    (low, high, auto: Responses' input_image), None for the endpoint's default."""

    url: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation sent to the model."""

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # assistant only
    tool_call_id: str | None = None  # tool only: the call it answers
    # A user message holding images: its texts and images in their order, sent instead of
    # `content`, which is then its text alone (for what reads only text, such as shields).
    parts: tuple[str | ImageURL, ...] = ()
    # Its JSON in the OpenAI chat form, made by the openai provider the first time it sends
    # the message: a session's history goes to the model again with every turn.
    wire_json: bytes = field(default=b"", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        object.__setattr__(self, "parts", tuple(self.parts))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call; `parameters` is the JSON schema of its arguments object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling settings; None means "not sent" (the provider's default applies)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion. `model` is agentd's model id (the registry's); the provider maps it
    to its own name. `tool_choice` is "auto", "required", "none" or a tool's name.
    `response_format` is None, {"type": "json_object"} or the OpenAI json_schema form
    (response_format_from). `timeout_s` comes from the caller's deadline: None waits forever."""

    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "tools", tuple(self.tools))
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def with_sampling(cls, sampling: Sampling, **kwargs: Any) -> ChatRequest:
        """A request carrying `sampling` (from sampling_from) plus the other fields."""
        return cls(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                   max_tokens=sampling.max_tokens, stop=sampling.stop,
                   repetition_penalty=sampling.repetition_penalty, **kwargs)


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call. `index` tells parallel calls apart; the id and name
    come with the call's first piece, its arguments in fragments to concatenate."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One streamed piece: any of a text delta, tool-call deltas, the finish reason (once, near
    the end) and the usage (once, last)."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@runtime_checkable
class InferenceProvider(Protocol):
    """What the loops call. Errors are agentd errors (errors.py) with the MODEL_* reasons;
    cancelling the consuming task stops the upstream call."""

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Streams the completion (an async generator: `async for chunk in ...`)."""
        ...

    async def list_models(self) -> list[str]:
        """The model names the endpoint itself serves."""
        ...

    async def close(self) -> None:
        ...


def sampling_from(params: pb.SamplingParams | None) -> Sampling:
    """The provider-neutral sampling of an agent's SamplingParams.

    Unlike the reference: greedy (also the default, no strategy) sends temperature 0; top_p
    sends its own temperature and top_p; top_k is forwarded; max_tokens unset or 0 is not sent
    (0 would ask for an empty answer)."""
    if params is None:
        return Sampling(temperature=0.0)
    temperature = top_p = top_k = None
    kind = params.strategy.WhichOneof("strategy")
    if kind == "top_p":
        strategy = params.strategy.top_p
        temperature = strategy.temperature if strategy.HasField("temperature") else None
        top_p = strategy.top_p if strategy.HasField("top_p") else 0.95
    elif kind == "top_k":
        top_k = params.strategy.top_k.top_k or None
    else:  # greedy, or no strategy: the proto's default is greedy
        temperature = 0.0
    max_tokens = params.max_tokens if params.HasField("max_tokens") and params.max_tokens > 0 else None
    penalty = params.repetition_penalty if params.HasField("repetition_penalty") else None
    return Sampling(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                    stop=tuple(params.stop), repetition_penalty=penalty)


def response_format_from(fmt: pb.AgentResponseFormat | None, *,
                         field: str = "response_format") -> dict[str, Any] | None:
    """The OpenAI response_format of an agent's AgentResponseFormat (None: free text).

    The reference passed the Llama Stack form through, which OpenAI endpoints reject; here
    json_schema becomes {"type": "json_schema", "json_schema": {"name", "schema"}}. A grammar
    cannot be expressed to an OpenAI endpoint: INVALID_ARGUMENT naming `field`."""
    if fmt is None:
        return None
    kind = fmt.WhichOneof("format")
    if kind is None:
        return None
    if kind == "grammar":
        raise InvalidArgument(field, "grammar response formats are not supported by OpenAI-compatible "
                                     "models; use json_schema")
    schema = codec.to_json(fmt.json_schema.json_schema)  # whole numbers stay ints
    name = schema.get("title") if isinstance(schema.get("title"), str) else None
    return {"type": "json_schema",
            "json_schema": {"name": _schema_name(name or "response"), "schema": schema}}


def _schema_name(name: str) -> str:
    # OpenAI: a-z, A-Z, 0-9, underscores and dashes, at most 64 characters.
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
    return cleaned or "response"
