"""Strict validation against the openai SDK's own pydantic types: what the wire
conformance tests (tests/e2e/test_openai_wire.py, the Conversations REST tests) check
every JSON object and SSE event with, and the REST answers they read."""

from __future__ import annotations

from typing import Any

import httpx
import pydantic
from openai.types.responses import Response

# Keys OpenAI sends that the SDK's types leave out: a Response's `store` (in every response
# OpenAI streams or returns, e.g. {"store": true, ...}), which agentd echoes too.
SENT_BY_OPENAI_UNDECLARED = {Response: {"store"}}


def undeclared_keys(value: Any, path: str = "$") -> list[str]:
    """Paths of the keys the SDK's models kept as extras (they allow extras, so a plain
    validation would accept a key OpenAI never sends)."""
    if isinstance(value, pydantic.BaseModel):
        known = SENT_BY_OPENAI_UNDECLARED.get(type(value), set())
        found = [f"{path}.{key}" for key in (value.model_extra or {}) if key not in known]
        for name in type(value).model_fields:
            found += undeclared_keys(getattr(value, name), f"{path}.{name}")
        return found
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in undeclared_keys(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in undeclared_keys(v, f"{path}.{k}")]
    return []


def conforms(sdk_type: Any, body: Any) -> Any:
    """`body` as the SDK's `sdk_type`, validated strictly (pydantic's strict mode: no
    coercion; required fields present) and with no undeclared key anywhere in it."""
    value = pydantic.TypeAdapter(sdk_type).validate_python(body, strict=True)
    assert undeclared_keys(value) == [], f"undeclared keys in {body}"
    return value


def ok(response: httpx.Response, sdk_type: Any) -> dict:
    """The JSON body of a 200 answer, which must be strictly the SDK's `sdk_type`."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    conforms(sdk_type, body)
    return body


def openai_error(response: httpx.Response, status: int) -> dict:
    """The `error` of an OpenAI error answer: exactly its four keys, a message, and the type
    the SDK expects of that status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error"), error
    return error
