"""Resource ids: a type prefix and 32 random hex digits (e.g. "turn_3f2a...")."""

from __future__ import annotations

import uuid

AGENT, SESSION, TURN, STEP = "agent", "sess", "turn", "step"
RESPONSE, CONVERSATION = "resp", "conv"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
