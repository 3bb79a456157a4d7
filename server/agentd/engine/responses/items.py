"""Response items: the request's input made ready to store (every item with an id, string
content as parts), checked (a function_call_output answers a call it can see), and any list
of items (a transcript, a conversation) turned into the chat messages sent to the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agentd import ids
from agentd.engine.items import stored_item
from agentd.errors import InvalidArgument
from agentd.inference import ChatMessage, ImageURL, ToolCall
from agentd.v1 import response_items_pb2 as it
from agentd.v1 import response_resource_pb2 as rt

USER = it.RESPONSE_MESSAGE_ROLE_USER
_CHAT_ROLES = {it.RESPONSE_MESSAGE_ROLE_USER: "user", it.RESPONSE_MESSAGE_ROLE_ASSISTANT: "assistant",
               it.RESPONSE_MESSAGE_ROLE_SYSTEM: "system",
               # OpenAI's developer messages are system messages to chat-completions models.
               it.RESPONSE_MESSAGE_ROLE_DEVELOPER: "system"}
# The details sent with an image_url part; "auto", the default (and what an image stored
# without one has), goes as no detail at all, which every chat server takes.
_DETAILS = {it.RESPONSE_IMAGE_DETAIL_LOW: "low", it.RESPONSE_IMAGE_DETAIL_HIGH: "high",
            it.RESPONSE_IMAGE_DETAIL_ORIGINAL: "original"}
# Items that are context the model already saw summarized in the messages that follow them
# (tool runs of agentd's, reasoning): kept in transcripts, not sent as chat messages.
_NOT_SENT = {"file_search_call", "web_search_call", "mcp_call", "mcp_list_tools",
             "mcp_approval_request", "mcp_approval_response", "reasoning"}


def user_message(text: str) -> it.ResponseItem:
    """A string input as the stored user message: one input_text part."""
    return it.ResponseItem(message=it.ResponseMessage(
        id=ids.new_id("msg"), role=USER, status=it.RESPONSE_ITEM_STATUS_COMPLETED,
        content=it.ResponseMessageContent(parts=it.ResponseContentPartList(
            parts=[it.ResponseContentPart(input_text=it.ResponseInputText(text=text))]))))


def input_items(given: rt.ResponseInput) -> list[it.ResponseItem]:
    """The request's input as it is stored: a string becomes a user message; listed items
    take the stored form conversations give them too (engine/items.py: an id when they have
    none, a status, string content as one part). INVALID_ARGUMENT (param `input`) for what
    agentd cannot send to a model yet."""
    if given.WhichOneof("input") == "text":
        return [user_message(given.text)]
    items = []
    for position, original in enumerate(given.items.items):
        where = f"input[{position}]"
        item = stored_item(original, where)
        if item.WhichOneof("item") == "message":
            _check_content(item.message, where)
        elif item.WhichOneof("item") == "function_call_output":
            _check_output(item.function_call_output, where)
        items.append(item)
    return items


def _check_content(message: it.ResponseMessage, where: str) -> None:
    """What a model can be sent: images by URL in user messages, no files yet (their URLs
    were checked by stored_item)."""
    if message.content.WhichOneof("content") != "parts":
        return
    for index, part in enumerate(message.content.parts.parts):
        kind = part.WhichOneof("part")
        field = f"{where}.content[{index}]"
        if kind == "input_file":
            raise InvalidArgument(field, "input_file is not supported yet: the models agentd serves "
                                         "take text and images")
        if kind == "input_image":
            if message.role != USER:
                raise InvalidArgument(field, "input_image is allowed in user messages only")
            if not part.input_image.HasField("image_url"):
                raise InvalidArgument(f"{field}.image_url", "required: the image's http(s) or data: URL "
                                                            "(file_id is not supported yet)")


def check_sendable(items: Iterable[it.ResponseItem], field: str) -> None:
    """A conversation's items, which may hold what OpenAI's conversations take but agentd
    cannot send to a model yet (a file, an image by file_id or outside a user message): the
    response fails INVALID_ARGUMENT naming `field` and the item, rather than leaving it out
    and letting the model answer as if it had seen it. (Image URLs are checked when an item
    is stored, not again with every response: a data: URL is decoded to be checked.)"""
    for item in items:
        try:
            if item.HasField("message"):
                _check_content(item.message, "item")
            elif item.HasField("function_call_output"):
                _check_output(item.function_call_output, "item")
        except InvalidArgument as e:
            (_, problem), = e.field_violations
            raise InvalidArgument(field, f"item '{getattr(item, item.WhichOneof('item')).id}' cannot be "
                                         f"sent to a model: {problem}") from None


def _check_output(output: it.ResponseFunctionCallOutput, where: str) -> None:
    """A function's output reaches the model as a tool message, which holds text only."""
    if output.output.WhichOneof("output") != "parts":
        return
    for index, part in enumerate(output.output.parts.parts):
        kind = part.WhichOneof("part")
        if kind in ("input_image", "input_file"):
            raise InvalidArgument(f"{where}.output[{index}]", f"{kind} is not supported in a function's "
                                  "output: models are sent function outputs as text")


def check_outputs_paired(history: Sequence[it.ResponseItem], given: Sequence[it.ResponseItem]) -> None:
    """Calls and outputs pair up, as OpenAI requires before it runs a model: every
    function_call_output of the input answers a function_call seen before it (in the
    replayed transcript or earlier in the input), and every function_call, there or in the
    input, has its output. INVALID_ARGUMENT (param `input`) otherwise, rather than a
    model server's refusal of the chat messages (a failed response) or, from a lenient one,
    an answer to a conversation with a hole in it."""
    seen: set[str] = set()
    unanswered: dict[str, None] = {}  # in the order the calls came
    for item in history:
        if item.HasField("function_call"):
            seen.add(item.function_call.call_id)
            unanswered[item.function_call.call_id] = None
        elif item.HasField("function_call_output"):
            unanswered.pop(item.function_call_output.call_id, None)
    for item in given:
        if item.HasField("function_call"):
            seen.add(item.function_call.call_id)
            unanswered[item.function_call.call_id] = None
        elif item.HasField("function_call_output"):
            call_id = item.function_call_output.call_id
            if call_id not in seen:
                raise InvalidArgument("input", f"No tool call found for function call output with call_id "
                                               f"{call_id}.")
            unanswered.pop(call_id, None)
    if unanswered:
        raise InvalidArgument("input", f"No tool output found for function call {next(iter(unanswered))}.")


def chat_messages(items: Iterable[it.ResponseItem]) -> list[ChatMessage]:
    """The chat messages of a list of items, in order. Consecutive function calls (and the
    assistant text just before them) become one assistant message with tool calls, as the
    model produced them."""
    messages: list[ChatMessage] = []
    calls: list[ToolCall] = []

    def end_calls() -> None:
        if not calls:
            return
        text = None
        if messages and messages[-1].role == "assistant" and not messages[-1].tool_calls:
            text = messages.pop().content
        messages.append(ChatMessage(role="assistant", content=text, tool_calls=tuple(calls)))
        calls.clear()

    for item in items:
        kind = item.WhichOneof("item")
        if kind == "function_call":
            call = item.function_call
            calls.append(ToolCall(id=call.call_id, name=call.name, arguments=call.arguments or "{}"))
            continue
        end_calls()
        if kind == "message":
            message = item.message
            role = _CHAT_ROLES.get(message.role, "user")
            if role == "user":
                text, parts = _user_content(message.content)
                messages.append(ChatMessage(role=role, content=text, parts=parts))
            else:
                messages.append(ChatMessage(role=role, content=text_of(message.content)))
        elif kind == "function_call_output":
            output = item.function_call_output
            content = (output.output.text if output.output.WhichOneof("output") == "text"
                       else _parts_text(output.output.parts.parts))
            messages.append(ChatMessage(role="tool", content=content, tool_call_id=output.call_id))
        elif kind not in _NOT_SENT:
            raise InvalidArgument("input", f"{kind} items cannot be sent to a model")
    end_calls()
    return messages


def text_of(content: it.ResponseMessageContent) -> str:
    if content.WhichOneof("content") == "text":
        return content.text
    return _parts_text(content.parts.parts)


def _user_content(content: it.ResponseMessageContent) -> tuple[str, tuple[str | ImageURL, ...]]:
    """A user message's text (as text_of has it) and, when it holds an image by URL, its texts
    and images in their order (else none: its text goes as a string). Parts a model cannot be
    sent (a file, an image by file_id: refused in a response's input, but a conversation may
    hold them) are left out. One pass over the parts: a chain's every message is converted
    again with each response."""
    if content.WhichOneof("content") == "text":
        return content.text, ()
    texts: list[str] = []
    sent: list[str | ImageURL] = []
    has_image = False
    for part in content.parts.parts:
        kind = part.WhichOneof("part")
        if kind in ("input_text", "output_text"):
            texts.append(getattr(part, kind).text)
            sent.append(texts[-1])
        elif kind == "input_image" and part.input_image.HasField("image_url"):
            has_image = True
            sent.append(ImageURL(part.input_image.image_url, _DETAILS.get(part.input_image.detail)))
        elif kind == "reasoning_text":
            texts.append(part.reasoning_text.text)
        elif kind == "refusal":
            texts.append(part.refusal.refusal)
    return "\n".join(texts), tuple(sent) if has_image else ()


def weight(items: Iterable[it.ResponseItem]) -> int:
    """What items weigh in the transcript cache: one each, and one per KB of image URLs (an
    image given inline is a data: URL of its bytes in base64; the cache holds the items, not
    their chat messages)."""
    count = image_bytes = 0
    for item in items:
        count += 1
        if item.HasField("message") and item.message.content.WhichOneof("content") == "parts":
            image_bytes += sum(len(part.input_image.image_url) for part in item.message.content.parts.parts)
    return count + image_bytes // 1024


def _parts_text(parts: Iterable[it.ResponseContentPart]) -> str:
    texts = []
    for part in parts:
        kind = part.WhichOneof("part")
        if kind in ("input_text", "output_text", "reasoning_text"):
            texts.append(getattr(part, kind).text)
        elif kind == "refusal":
            texts.append(part.refusal.refusal)
    return "\n".join(texts)
