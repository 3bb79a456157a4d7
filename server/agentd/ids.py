"""Resource ids: opaque strings with a type prefix, so a misplaced id is recognisable in logs
and errors without being parseable by clients.

The prefixes agentd uses: agent_ (agents), sess_ (sessions), turn_ (turns), step_ (steps),
resp_ (responses), msg_ (messages), fc_ (function calls), fco_ (function call outputs),
mcpa_ (MCP approval responses), conv_ (conversations), vs_ (vector stores), file_ (files).
"""

from __future__ import annotations

import uuid

from agentd.errors import InvalidArgument

AGENT, SESSION, TURN, STEP = "agent", "sess", "turn", "step"
RESPONSE, CONVERSATION = "resp", "conv"


def new_id(prefix: str) -> str:
    """A new `<prefix>_<32 hex>` id (random: ids say nothing about order or time)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def no_nul(value: str, field: str) -> str:
    """An id or name a request gives, refused (INVALID_ARGUMENT naming `field`) if it holds
    NUL, which PostgreSQL can neither store nor compare."""
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value
