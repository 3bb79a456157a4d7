"""What the streaming RPCs send: each run event inside its method's response message."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

Response = TypeVar("Response", bound=Message)


def event_response(response_type: type[Response], event: Message) -> Response:
    """`response_type(event=event)`, built the cheaper way: CopyFrom into the new message's
    field costs about 0.5 us an event against about 1.3 us for the constructor's keyword copy
    (upb; a simple turn's 11 events: 5.6 us against 14.3 us)."""
    response = response_type()
    response.event.CopyFrom(event)  # type: ignore[attr-defined]
    return response
