"""Checks of request fields that the contract's field_behavior cannot express, shared by the
servicers: `no_nul` (from agentd.ids, re-exported here) and the idempotency key. Presence is
the validator's: agentd.validation runs before every method."""

from __future__ import annotations

from agentd.errors import InvalidArgument
from agentd.ids import no_nul

MAX_REQUEST_ID = 255


def request_id_of(request) -> str | None:
    """The idempotency key of a create request; None when not given (or empty)."""
    if not request.HasField("request_id") or not request.request_id:
        return None
    if len(request.request_id) > MAX_REQUEST_ID:
        raise InvalidArgument("request_id", f"at most {MAX_REQUEST_ID} characters")
    return no_nul(request.request_id, "request_id")
