"""Checks of request fields that the contract's field_behavior cannot express, shared by the
servicers (presence is the validator's: agentd.validation runs before every method)."""

from __future__ import annotations

from agentd.errors import InvalidArgument

MAX_REQUEST_ID = 255


def no_nul(value: str, field: str) -> str:
    """An id or name without NUL, which PostgreSQL cannot store or compare."""
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def request_id_of(request) -> str | None:
    """The idempotency key of a create request; None when not given (or empty)."""
    if not request.HasField("request_id") or not request.request_id:
        return None
    if len(request.request_id) > MAX_REQUEST_ID:
        raise InvalidArgument("request_id", f"at most {MAX_REQUEST_ID} characters")
    return no_nul(request.request_id, "request_id")
