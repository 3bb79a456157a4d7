"""Page tokens: opaque to clients, shared by the servicers (which read them) and the gateway
(which folds the legacy cursors `start_index`, `after` and `before` into one).

A token is URL-safe base64 of a small JSON object with exactly one of:
  {"offset": N}     skip N items (Llama Stack's start_index)
  {"after": ID}     items after the item ID in the listing order (OpenAI's after; our next page)
  {"before": ID}    items before the item ID (OpenAI's before)
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from agentd.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Cursor:
    offset: int = 0
    after: str | None = None
    before: str | None = None


def encode(cursor: Cursor) -> str:
    if cursor.after is not None:
        body = {"after": cursor.after}
    elif cursor.before is not None:
        body = {"before": cursor.before}
    else:
        body = {"offset": cursor.offset}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def decode(token: str, field: str = "page_token") -> Cursor:
    if not token:
        return Cursor()
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument(field, "not a page token returned by this service") from None
    if not isinstance(body, dict) or len(body) != 1:
        raise InvalidArgument(field, "not a page token returned by this service")
    if isinstance(body.get("offset"), int) and not isinstance(body["offset"], bool):
        if body["offset"] < 0:
            raise InvalidArgument(field, "the offset (start_index) must be >= 0")
        return Cursor(offset=body["offset"])
    for key in ("after", "before"):
        if isinstance(body.get(key), str):
            return Cursor(**{key: body[key]})
    raise InvalidArgument(field, "not a page token returned by this service")


def page_size(requested: int, field: str = "page_size") -> int:
    """0 means the default; negative is an error; above the maximum is capped (AIP-158)."""
    if requested < 0:
        raise InvalidArgument(field, "must be >= 0")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# The legacy query parameters the gateway folds into a page token, and what each means.
def from_legacy(name: str, raw: str) -> Cursor:
    if name == "start_index":
        try:
            offset = int(raw)
        except ValueError:
            raise InvalidArgument(name, f"expected an integer, got {raw!r}") from None
        if offset < 0:
            raise InvalidArgument(name, "must be >= 0")
        return Cursor(offset=offset)
    if name in ("after", "before"):
        if not raw:
            raise InvalidArgument(name, "must not be empty")
        return Cursor(**{name: raw})
    raise ValueError(f"unknown legacy cursor {name!r}")  # a proto option names an unknown cursor
