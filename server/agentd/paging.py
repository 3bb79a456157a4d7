"""Page tokens: opaque to clients, shared by the servicers (which read them) and the gateway
(which folds the legacy cursors `start_index`, `after` and `before` into one).

A token is URL-safe base64 of a small JSON object with exactly one of:
  {"key": [T, ID]}  items after the sort key (created_at T, id ID) in the listing order: the
                    next_page_token we hand out. It needs no lookup, so it keeps working
                    when the item it names has been deleted meanwhile.
  {"offset": N}     skip N items (Llama Stack's start_index)
  {"after": ID}     items after the item ID in the listing order (OpenAI's after)
  {"before": ID}    items before the item ID (OpenAI's before)
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from agentd.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 2**31 - 1  # beyond any real list, and within every database's integer range


@dataclass(frozen=True, slots=True)
class Cursor:
    offset: int = 0
    after: str | None = None
    before: str | None = None
    key: tuple[int, str] | None = None


def encode(cursor: Cursor) -> str:
    if cursor.key is not None:
        body: dict = {"key": list(cursor.key)}
    elif cursor.after is not None:
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
        raise foreign_token(field) from None
    if not isinstance(body, dict) or len(body) != 1:
        raise foreign_token(field)
    if isinstance(body.get("offset"), int) and not isinstance(body["offset"], bool):
        return Cursor(offset=_offset(body["offset"], field))
    key = body.get("key")
    if isinstance(key, list) and len(key) == 2 and _sort_value(key[0]) and _id(key[1]):
        return Cursor(key=(key[0], key[1]))
    for key in ("after", "before"):
        if _id(body.get(key)):
            return Cursor(**{key: body[key]})
    raise foreign_token(field)


def foreign_token(field: str = "page_token") -> InvalidArgument:
    """The error for a page token this service did not hand out (or a forged one)."""
    return InvalidArgument(field, "not a page token returned by this service")


def _sort_value(value: Any) -> bool:
    """A sort key we hand out: an integer a database column holds (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _id(value: Any) -> bool:
    return isinstance(value, str) and "\x00" not in value


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
        return Cursor(offset=_offset(offset, name))
    if name in ("after", "before"):
        if not raw:
            raise InvalidArgument(name, "must not be empty")
        return Cursor(**{name: raw})
    raise ValueError(f"unknown legacy cursor {name!r}")  # a proto option names an unknown cursor


def _offset(offset: int, field: str) -> int:
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument(field, f"must be between 0 and {MAX_OFFSET}")
    return offset


# OpenAI's list limits (conversation items, response input items): `limit` 1..100, default 20.
OPENAI_DEFAULT_LIMIT = 20
OPENAI_MAX_LIMIT = 100


def openai_limit(requested: int, field: str = "page_size", default: int = OPENAI_DEFAULT_LIMIT) -> int:
    """0 means the default (20 unless the list says otherwise); negative or above 100 is an
    error, as OpenAI answers it (not capped as page_size is: an OpenAI client asking for 500
    expects a 400)."""
    if not 0 <= requested <= OPENAI_MAX_LIMIT:
        raise InvalidArgument(field, f"must be between 1 and {OPENAI_MAX_LIMIT}")
    return requested or default
