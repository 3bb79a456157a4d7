"""What the model sees: a session's turns rebuilt from their stored steps, as chat messages.

The steps are the source of truth (as in Llama Stack): for every turn, its input messages,
then each inference step's answer, each tool_execution step's results and each shield
violation's refusal. A turn that did not complete (failed, cancelled, interrupted) gives later
turns nothing, as in Llama Stack, which stores only the turns that complete or pause: a turn
whose input made the model fail would otherwise make every later turn of the session fail too.

Unlike the reference, the conversation is kept valid for OpenAI-compatible endpoints, which
refuse a tool call without its result and a result without its call (`paired`): an answer's
calls that never got a result (a turn stopped at max_infer_iters) are left out, unless the
next turn's input answers them with tool messages, and a tool message answering no call
right before it is left out.

Unlike the reference, a shield violation does not poison the session: a turn whose input was
refused gives later turns nothing (neither the flagged input nor the refusal), and an answer
refused by an output shield is replaced by the refusal (the flagged text is not sent again).
"""

from __future__ import annotations

from collections.abc import Sequence

from agentd.engine.images import agent_image_url
from agentd.engine.shields import refusal_text as shield_refusal
from agentd.inference import ChatMessage, ImageURL, ToolCall
from agentd.v1 import agent_messages_pb2 as msg
from agentd.v1 import agent_resources_pb2 as types
from agentd.v1 import safety_pb2


def text_of(content: msg.InterleavedContent) -> str:
    """The text of interleaved content, its images left out."""
    if content.WhichOneof("content") == "text":
        return content.text
    return "".join(item.text.text for item in content_items(content) if item.HasField("text"))


def input_message(message: msg.TurnInputMessage) -> ChatMessage:
    if message.HasField("tool"):
        return ChatMessage(
            role="tool", content=text_of(message.tool.content), tool_call_id=message.tool.call_id
        )
    content = message.user.content
    return ChatMessage(role="user", content=text_of(content), parts=_parts(content))


def content_items(content: msg.InterleavedContent) -> Sequence[msg.InterleavedContentItem]:
    """The items of interleaved content given as one item or a list (none for text)."""
    kind = content.WhichOneof("content")
    return [content.item] if kind == "item" else content.items.items if kind == "items" else ()


def _parts(content: msg.InterleavedContent) -> tuple[str | ImageURL, ...]:
    """A user message's texts and images in their order, when it holds an image (else none:
    text alone goes as a string). An image no model's server could read (stored before
    images were checked) is left out, as it was then."""
    items = content_items(content)
    if not any(item.HasField("image") for item in items):
        return ()
    parts: list[str | ImageURL] = []
    for item in items:
        if not item.HasField("image"):
            parts.append(item.text.text)
        elif (url := agent_image_url(item.image.image)) is not None:
            parts.append(ImageURL(url))
    return tuple(parts)


def weight(messages: Sequence[ChatMessage]) -> int:
    """What messages weigh in the history cache: one each, and two per KB of image URLs (an
    image given as data is kept as a data: URL of its bytes in base64, and again in the
    message's encoded JSON)."""
    return len(messages) + 2 * sum(len(part.url) for m in messages if m.parts for part in m.parts
                                   if isinstance(part, ImageURL)) // 1024


def assistant_message(message: msg.CompletionMessage) -> ChatMessage | None:
    """The model's answer as history."""
    calls = tuple(
        ToolCall(id=c.call_id, name=c.tool_name, arguments=c.arguments or "{}") for c in message.tool_calls
    )
    content = text_of(message.content)
    if not content and not calls:
        return None
    return ChatMessage(role="assistant", content=content or None, tool_calls=calls)


def refusal_text(violation: safety_pb2.SafetyViolation, shield_id: str) -> str:
    """What a turn refused by a shield answers: the violation's message, else a plain one."""
    return shield_refusal(violation.user_message if violation.HasField("user_message") else None, shield_id)


# A turn that ended so gives later turns nothing (see the module's comment).
_NOT_COMPLETED = frozenset(
    {types.TURN_STATUS_FAILED, types.TURN_STATUS_CANCELLED, types.TURN_STATUS_INTERRUPTED})


def turn_messages(turn: types.Turn) -> list[ChatMessage]:
    """One turn (completed, paused or running) as the messages the model saw and said; calls
    and results are paired over the whole conversation (`paired`)."""
    if turn.status in _NOT_COMPLETED:
        return []
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
            answer = assistant_message(step.inference.model_response)
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


def paired(messages: list[ChatMessage]) -> tuple[list[ChatMessage], list[int]]:
    """The conversation as OpenAI-compatible endpoints take it: each tool call of an assistant
    message answered by one of the tool messages right after it. Calls with no result there
    are left out (an answer left with neither text nor calls goes), and so are the tool
    messages that answer none of them. Returns the conversation and the indexes, in
    `messages`, of the tool messages left out."""
    kept: list[ChatMessage] = []
    dropped: list[int] = []
    i, end = 0, len(messages)
    while i < end:
        message = messages[i]
        if message.role == "tool":  # no assistant message with calls right before it
            dropped.append(i)
            i += 1
            continue
        if not message.tool_calls:
            kept.append(message)
            i += 1
            continue
        results = i + 1
        while results < end and messages[results].role == "tool":
            results += 1
        called = {call.id for call in message.tool_calls}
        answers: dict[str, int] = {}
        for k in range(i + 1, results):
            call_id = messages[k].tool_call_id
            if call_id in called and call_id not in answers:
                answers[call_id] = k
            else:
                dropped.append(k)
        if len(answers) < len(called):
            calls = tuple(call for call in message.tool_calls if call.id in answers)
            message = ChatMessage(role="assistant", content=message.content, tool_calls=calls)
        if message.content or message.tool_calls:
            kept.append(message)
        kept.extend(messages[k] for k in sorted(answers.values()))
        i = results
    return kept, dropped
