"""One streamed model completion as the turn and response loops read it: the text, the tool
calls reassembled by their chunk index (parallel calls stay apart, even when a provider
interleaves their pieces), the finish reason and the usage. Each loop turns what a chunk
brought into its own events; this module only accumulates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentd.inference import ChatChunk, Usage


@dataclass(slots=True)
class StreamedCall:
    """A tool call as it streams in; `arguments` grows with each fragment."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class CallPiece:
    """What one chunk brought to a call: `started` on its first piece, the `fragment` of
    arguments it carried ("" when none)."""

    call: StreamedCall
    started: bool
    fragment: str


@dataclass(slots=True)
class Completion:
    text_parts: list[str] = field(default_factory=list)
    calls: dict[int, StreamedCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None

    def feed(self, chunk: ChatChunk) -> list[str | CallPiece]:
        """Adds a chunk; returns what it brought, in order: its text (a str) first, then a
        CallPiece per tool-call piece."""
        brought: list[str | CallPiece] = []
        if chunk.text:
            self.text_parts.append(chunk.text)
            brought.append(chunk.text)
        for piece in chunk.tool_calls:
            call = self.calls.get(piece.index)
            started = call is None
            if call is None:
                call = self.calls[piece.index] = StreamedCall(piece.index, piece.id or "", piece.name or "")
            else:
                call.id = call.id or piece.id or ""
                call.name = call.name or piece.name or ""
            call.arguments += piece.arguments
            brought.append(CallPiece(call, started, piece.arguments))
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if chunk.usage:
            self.usage = chunk.usage
        return brought

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def calls_in_order(self) -> list[StreamedCall]:
        return [self.calls[index] for index in sorted(self.calls)]


def arguments_object(text: str) -> dict[str, Any] | None:
    """A tool call's arguments as the object they must be ("" is {}); None when the model
    wrote something else (not JSON, or not an object)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
