"""history.paired: the conversation sent to OpenAI-compatible endpoints, which refuse a tool
call without its result right after it and a result without its call."""

from __future__ import annotations

from agentd.engine.turns.history import paired
from agentd.inference import ChatMessage, ToolCall


def asks(*call_ids: str, text: str | None = None) -> ChatMessage:
    return ChatMessage(role="assistant", content=text,
                       tool_calls=tuple(ToolCall(id=i, name="weather", arguments="{}") for i in call_ids))


def result(call_id: str) -> ChatMessage:
    return ChatMessage(role="tool", content="sunny", tool_call_id=call_id)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def test_a_complete_conversation_is_sent_as_it_is():
    messages = [user("a"), asks("c1", "c2"), result("c2"), result("c1"), user("b")]
    assert paired(messages) == (messages, [])


def test_calls_without_their_result_right_after_them_are_left_out():
    messages = [user("a"), asks("c1", "c2", text="let me see"), result("c1"), user("b"), result("c2")]
    kept, dropped = paired(messages)
    assert kept == [user("a"), asks("c1", text="let me see"), result("c1"), user("b")]
    assert dropped == [4]  # c2's result comes after another message: it answers nothing there


def test_an_answer_left_with_neither_text_nor_calls_goes():
    assert paired([user("a"), asks("c1"), user("b")]) == ([user("a"), user("b")], [])


def test_results_that_answer_no_call_or_one_answered_already_are_left_out():
    kept, dropped = paired([result("c0"), user("a"), asks("c1"), result("c1"), result("c1"), result("c9")])
    assert kept == [user("a"), asks("c1"), result("c1")]
    assert dropped == [0, 4, 5]
