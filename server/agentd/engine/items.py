"""Items as agentd stores them (a conversation's items; the same rules suit a response's
stored input): what OpenAI returns for an item it has stored. Every item has an id (minted
when the client sent none), a status ("completed" when none was given), and a message's
content is a list of parts (a string becomes one input_text part, output_text for the
assistant). And the `include` values that add optional data to items read back.
"""

from __future__ import annotations

from agentd import ids
from agentd.engine.images import checked_url
from agentd.errors import InvalidArgument
from agentd.storage.responses import item_id_of
from agentd.v1 import response_items_pb2 as pb

# The prefixes of the ids minted for the item types whose id a client may omit (the others'
# ids are REQUIRED in the contract), as OpenAI spells them.
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
                "mcp_approval_response": "mcpa"}
MAX_ITEM_ID = 64  # the width of the stored id columns
# The content parts each kind of content takes, as OpenAI answers a part of another kind.
_MODEL_PARTS = ("output_text", "refusal")
_GIVEN_PARTS = ("input_text", "input_image", "input_file")

# OpenAI's ResponseIncludable values. Of these, agentd stores some data that is only shown
# when asked for (stripped by with_include); file_search results are always shown.
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs",
})


def stored_item(item: pb.ResponseItem, field: str) -> pb.ResponseItem:
    """A copy of `item` in its stored form (see the module docstring). `field` names the
    item in errors (e.g. "items[3]")."""
    member = item.WhichOneof("item")
    if member is None:  # possible over gRPC: an item with no member set
        raise InvalidArgument(f"{field}.type", "required: the item's type and its fields")
    if member == "item_reference":
        # A conversation holds items, not pointers to items elsewhere.
        raise InvalidArgument(f"{field}.type",
                              "item_reference cannot be stored: send the referenced item itself")
    stored = pb.ResponseItem()
    stored.CopyFrom(item)
    body = getattr(stored, member)
    if not body.id:
        body.id = ids.new_id(_ID_PREFIXES[member])
    elif len(body.id) > MAX_ITEM_ID:
        raise InvalidArgument(f"{field}.id", f"at most {MAX_ITEM_ID} characters")
    else:
        ids.no_nul(body.id, f"{field}.id")
    if member == "message":
        allowed = _MODEL_PARTS if body.role == pb.RESPONSE_MESSAGE_ROLE_ASSISTANT else _GIVEN_PARTS
        _check_content(body.content, "content", f"{field}.content", allowed)
    elif member == "function_call_output":
        _check_content(body.output, "output", f"{field}.output", _GIVEN_PARTS)
    if "status" in body.DESCRIPTOR.fields_by_name and not body.status:
        body.status = pb.RESPONSE_ITEM_STATUS_COMPLETED
    if member == "message" and body.content.WhichOneof("content") == "text":
        text = body.content.text
        part = (pb.ResponseContentPart(output_text=pb.ResponseOutputText(text=text))
                if body.role == pb.RESPONSE_MESSAGE_ROLE_ASSISTANT
                else pb.ResponseContentPart(input_text=pb.ResponseInputText(text=text)))
        body.content.parts.parts.append(part)  # setting the list member clears the text
    return stored


def _check_content(content, oneof: str, field: str, allowed: tuple[str, ...]) -> None:
    """String-or-parts content with a member set, and every part with one (a gRPC client
    can send them empty, which no JSON reader could take back) of a kind `allowed` there
    (the model's parts in an assistant message, given ones elsewhere). An image without a
    detail is stored with "auto", the default it stands for (OpenAI's types require one)."""
    which = content.WhichOneof(oneof)
    if which is None:
        raise InvalidArgument(field, "required: a string or a list of parts")
    if which == "parts":
        for i, part in enumerate(content.parts.parts):
            kind = part.WhichOneof("part")
            if kind is None:
                raise InvalidArgument(f"{field}[{i}].type", "required: the part's type and its fields")
            if kind not in allowed:
                raise InvalidArgument(f"{field}[{i}].type", f"Invalid value: '{kind}'. Supported values are: "
                                      + ", ".join(f"'{k}'" for k in allowed[:-1]) + f" and '{allowed[-1]}'.")
            if kind == "input_image":
                if not part.input_image.detail:
                    part.input_image.detail = pb.RESPONSE_IMAGE_DETAIL_AUTO
                if part.input_image.HasField("image_url"):
                    # Stored items are sent to models again: a URL no model's server can read
                    # would fail every later response of the conversation.
                    checked_url(part.input_image.image_url, f"{field}[{i}].image_url")


def stored_items(items, field: str = "items") -> list[pb.ResponseItem]:
    """The stored form of a request's items; two items with one id are an error (one call
    cannot say which of them the conversation keeps)."""
    stored, seen = [], set()
    for i, item in enumerate(items):
        one = stored_item(item, f"{field}[{i}]")
        item_id = item_id_of(one)
        if item_id in seen:
            raise InvalidArgument(f"{field}[{i}].id", f"'{item_id}' is given twice in this request")
        seen.add(item_id)
        stored.append(one)
    return stored


def check_include(values, field: str = "include") -> frozenset[str]:
    """The include values of a request, each checked: an unknown one is INVALID_ARGUMENT
    naming its index."""
    for index, value in enumerate(values):
        if value not in INCLUDABLE:
            raise InvalidArgument(f"{field}[{index}]", f"unknown include value '{value}'; one of: "
                                  + ", ".join(sorted(INCLUDABLE)))
    return frozenset(values)


def with_include(item: pb.ResponseItem, include: frozenset[str]) -> pb.ResponseItem:
    """`item` (changed in place) without the stored data its reader did not include."""
    member = item.WhichOneof("item")
    if member == "message" and "message.output_text.logprobs" not in include:
        for part in item.message.content.parts.parts:
            if part.WhichOneof("part") == "output_text":
                del part.output_text.logprobs[:]
    elif member == "web_search_call" and "web_search_call.action.sources" not in include:
        if item.web_search_call.action.WhichOneof("action") == "search":
            del item.web_search_call.action.search.sources[:]
    elif member == "reasoning" and "reasoning.encrypted_content" not in include:
        item.reasoning.ClearField("encrypted_content")
    return item
