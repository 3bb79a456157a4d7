"""The strict checker of the wire conformance tests catches what it must: a key the SDK does
not declare at any depth, a coerced value, a wrong literal."""

from __future__ import annotations

import copy

import pydantic
import pytest
from openai.types.responses import Response

from tests.openai_conformance import conforms

TEXT = {"type": "output_text", "text": "x", "annotations": [], "logprobs": []}
RESPONSE = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "status": "completed",
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [TEXT]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "store": True}


def changed(edit) -> dict:
    body = copy.deepcopy(RESPONSE)
    edit(body)
    return body


def test_a_conforming_body_passes_with_the_keys_openai_sends_undeclared():
    assert conforms(Response, RESPONSE).output[0].content[0].text == "x"


@pytest.mark.parametrize("edit", [
    lambda b: b.update(extension=1),
    lambda b: b["output"][0]["content"][0].update(bogus=1),
    lambda b: b["output"][0].update(store=True),  # `store` is allowed on a Response only
])
def test_an_undeclared_key_at_any_depth_fails(edit):
    with pytest.raises(AssertionError, match="undeclared keys"):
        conforms(Response, changed(edit))


@pytest.mark.parametrize("edit", [
    lambda b: b.update(created_at="1"),
    lambda b: b.update(object="responses"),
    lambda b: b["output"][0].update(type="messages"),
    lambda b: b.pop("model"),
])
def test_a_coerced_value_a_wrong_literal_or_a_missing_field_fails(edit):
    with pytest.raises(pydantic.ValidationError):
        conforms(Response, changed(edit))
