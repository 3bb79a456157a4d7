"""What the model sees: a session's turns rebuilt from their stored steps, as chat messages.

The steps are the source of truth (as in Llama Stack): for every turn, its input messages,
then each inference step's answer, each tool_execution step's results and each shield
violation's refusal. Unlike the reference, an answer's tool calls that never got a result
(a turn stopped at max_infer_iters, cancelled or failed) are left out, so the conversation
stays valid for OpenAI-compatible endpoints, which refuse unanswered calls.

Unlike the reference, a shield violation does not poison the session: a turn whose input was
refused gives later turns nothing (neither the flagged input nor the refusal), and an answer
refused by an output shield is replaced by the refusal (the flagged text is not sent again).
"""

from __future__ import annotations

from agentd.engine.shields import refusal_text as shield_refusal
from agentd.inference import ChatMessage, ToolCall
from agentd.v1 import agent_messages_pb2 as msg
from agentd.v1 import agent_resources_pb2 as types
from agentd.v1 import safety_pb2


def text_of(content: msg.InterleavedContent) -> str:
    """The text of interleaved content (image items have no text form for the model here)."""
    kind = content.WhichOneof("content")
    if kind == "text":
        return content.text
    if kind == "item":
        return content.item.text.text if content.item.HasField("text") else ""
    if kind == "items":
        return "".join(i.text.text for i in content.items.items if i.HasField("text"))
    return ""


def input_message(message: msg.TurnInputMessage) -> ChatMessage:
    if message.HasField("tool"):
        return ChatMessage(
            role="tool", content=text_of(message.tool.content), tool_call_id=message.tool.call_id
        )
    return ChatMessage(role="user", content=text_of(message.user.content))


def assistant_message(message: msg.CompletionMessage, answered: set[str] | None = None) -> ChatMessage | None:
    """The model's answer as history; only its calls in `answered` when given (None: all)."""
    calls = tuple(
        ToolCall(id=c.call_id, name=c.tool_name, arguments=c.arguments or "{}")
        for c in message.tool_calls
        if answered is None or c.call_id in answered
    )
    content = text_of(message.content)
    if not content and not calls:
        return None
    return ChatMessage(role="assistant", content=content or None, tool_calls=calls)


def refusal_text(violation: safety_pb2.SafetyViolation, shield_id: str) -> str:
    """What a turn refused by a shield answers: the violation's message, else a plain one."""
    return shield_refusal(violation.user_message if violation.HasField("user_message") else None, shield_id)


def turn_messages(turn: types.Turn) -> list[ChatMessage]:
    """One turn (finished, paused or running) as the messages the model saw and said."""
    refused = [
        step.shield_call
        for step in turn.steps
        if step.HasField("shield_call") and step.shield_call.HasField("violation")
    ]
    if any(shield.touchpoint == types.SHIELD_TOUCHPOINT_USER_INPUT for shield in refused):
        return []
    answered = {
        r.call_id
        for step in turn.steps
        if step.HasField("tool_execution")
        for r in step.tool_execution.tool_responses
    }
    messages: list[ChatMessage] = []
    last_answer: int | None = None  # where the latest model answer is in `messages`
    for message in turn.input_messages:
        if message.HasField("tool") and message.tool.call_id in answered:
            continue  # its result is in a step
        messages.append(input_message(message))
    for step in turn.steps:
        kind = step.WhichOneof("step")
        if kind == "inference":
            answer = assistant_message(step.inference.model_response, answered)
            last_answer = None
            if answer is not None:
                last_answer = len(messages)
                messages.append(answer)
        elif kind == "tool_execution":
            last_answer = None
            for response in step.tool_execution.tool_responses:
                messages.append(
                    ChatMessage(role="tool", content=text_of(response.content), tool_call_id=response.call_id)
                )
        elif kind == "shield_call" and step.shield_call.HasField("violation"):
            shield = step.shield_call
            if last_answer is not None:  # the refused answer: the refusal takes its place
                del messages[last_answer]
            refusal = refusal_text(shield.violation, shield.shield_id)
            messages.append(ChatMessage(role="assistant", content=refusal))
    return messages
