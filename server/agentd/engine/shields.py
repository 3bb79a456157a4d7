"""The shields hook: safety checks both loops run over a conversation (turns: an agent's
input_shields and output_shields; responses: `guardrails`).

A loop asks `check(shield_ids, messages)` with the provider-neutral chat messages it is about
to send (or has just received) and gets the violation that blocks, or None. Which shield ids
exist is configuration's (`shields`, what ShieldsService lists): a loop calls
`require_declared` while it resolves a request, before it starts, so an unknown id fails the
call (NOT_FOUND, SHIELD_NOT_FOUND) and never a run in progress. Nothing here knows turns or
responses.

Until shields are run for real (the shields issue), `DeclaredShields` is the implementation:
it knows the configured ids and never finds a violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentd.errors import NotFound
from agentd.inference import ChatMessage

ViolationLevel = Literal["info", "warn", "error"]


@dataclass(frozen=True, slots=True)
class ShieldViolation:
    """What a shield found. Only level "error" blocks; "warn" and "info" are for the log."""

    shield_id: str
    level: ViolationLevel
    user_message: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return self.level == "error"


class Shields(Protocol):
    """The shields a loop may name, and the check itself."""

    declared: frozenset[str]

    async def check(
        self, shield_ids: Sequence[str], messages: Sequence[ChatMessage]
    ) -> ShieldViolation | None:
        """Runs the shields over `messages`; returns the first blocking violation in
        `shield_ids` order, else the first non-blocking one, else None. Every id is declared
        (the caller checked with require_declared)."""
        ...


def refusal_text(user_message: str | None, shield_id: str) -> str:
    """What a loop answers in place of what a shield blocked: the violation's message, else
    a plain one naming the shield."""
    if user_message is not None:
        return user_message
    return f"I can't help with that: shield '{shield_id}' blocked it."


def require_declared(shields: Shields, shield_ids: Iterable[str], field: str | None = None) -> None:
    """NOT_FOUND (SHIELD_NOT_FOUND) for the first id configuration does not declare;
    `field`: the request field that named it."""
    for shield_id in shield_ids:
        if shield_id not in shields.declared:
            raise NotFound("shield", shield_id, field=field)


class DeclaredShields:
    """The configured shield ids, none of them run yet: every check passes."""

    def __init__(self, shield_ids: Iterable[str] = ()):
        self.declared = frozenset(shield_ids)

    async def check(
        self, shield_ids: Sequence[str], messages: Sequence[ChatMessage]
    ) -> ShieldViolation | None:
        return None
