"""Checks of request fields that the contract's field_behavior cannot express, shared by the
servicers: `no_nul` (from agentd.ids, re-exported here), the idempotency key and where a
re-attach starts. Presence is the validator's: agentd.validation runs before every method."""

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


def starting_after_of(request) -> int | None:
    """Where a re-attach (StreamTurnEvents, StreamResponseEvents) starts: None (the first
    event) when not given, else an event number, -1 meaning "before the first". A number past
    the last kept event is not refused: a client that followed a replica live may have seen
    events that replica never kept, and still gets the run's end."""
    if not request.HasField("starting_after"):
        return None
    if request.starting_after < -1:
        raise InvalidArgument("starting_after", f"must be -1 or more, got {request.starting_after}")
    return request.starting_after
