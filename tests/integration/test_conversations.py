"""ConversationsService over gRPC, against a real server on SQLite and PostgreSQL: the
conversation and its items as OpenAI keeps them, paging, and every error path."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from agentd import paging
from agentd.storage import schema
from agentd.v1 import common_pb2, conversations_pb2_grpc
from agentd.v1 import conversations_pb2 as pb
from agentd.v1 import response_items_pb2 as it
from tests.conftest import error_of

COMPLETED = it.RESPONSE_ITEM_STATUS_COMPLETED
ASC, DESC = common_pb2.SORT_ORDER_ASC, common_pb2.SORT_ORDER_DESC
USER, ASSISTANT = it.RESPONSE_MESSAGE_ROLE_USER, it.RESPONSE_MESSAGE_ROLE_ASSISTANT


@pytest.fixture
def stub(channel):
    return conversations_pb2_grpc.ConversationsServiceStub(channel)


def text_message(text: str, role=USER, item_id: str | None = None) -> it.ResponseItem:
    return it.ResponseItem(message=it.ResponseMessage(id=item_id, role=role,
                                                      content=it.ResponseMessageContent(text=text)))


def item_id(item: it.ResponseItem) -> str:
    return getattr(item, item.WhichOneof("item")).id


async def new_conversation(stub, items=(), **fields) -> pb.Conversation:
    created = await stub.CreateConversation(pb.CreateConversationRequest(items=items, **fields))
    return created.conversation


async def all_items(stub, conversation_id: str, **fields) -> list[it.ResponseItem]:
    listed = await stub.ListConversationItems(pb.ListConversationItemsRequest(
        conversation_id=conversation_id, page_size=100, **fields))
    return list(listed.data)


async def count(agentd, table) -> int:
    query = select(func.count()).select_from(table)
    return await agentd.db.read(lambda conn: conn.execute(query).scalar())


# ------------------------------------------------------------------ stub


async def test_create_with_items_and_metadata_then_get(stub):
    call = it.ResponseItem(function_call=it.ResponseFunctionCall(call_id="c1", name="f", arguments="{}"))
    output = it.ResponseItem(function_call_output=it.ResponseFunctionCallOutput(
        call_id="c1", output=it.ResponseFunctionCallOutputContent(text="42")))
    approval = it.ResponseItem(mcp_approval_response=it.ResponseMcpApprovalResponse(
        approval_request_id="mcpr_1", approve=True))
    conversation = await new_conversation(
        stub, [text_message("hi"), text_message("hello", ASSISTANT, "msg_mine"), call, output, approval],
        metadata={"topic": "demo"})
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "demo"}
    assert 1_700_000_000 < conversation.created_at < 10_000_000_000  # Unix seconds
    got = await stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id))
    assert got.conversation == conversation

    items = await all_items(stub, conversation.id, order=ASC)
    assert [i.WhichOneof("item") for i in items] == [
        "message", "message", "function_call", "function_call_output", "mcp_approval_response"]
    # Ids minted as OpenAI spells them, or kept as given.
    assert [item_id(i).split("_")[0] for i in items] == ["msg", "msg", "fc", "fco", "mcpa"]
    assert item_id(items[1]) == "msg_mine"
    # Every stored item has a status; string content is stored as one part of the role's kind.
    assert [getattr(i, i.WhichOneof("item")).status for i in items[:4]] == [COMPLETED] * 4
    assert items[0].message.content.parts.parts[0].input_text.text == "hi"
    assert items[1].message.content.parts.parts[0].output_text.text == "hello"
    assert items[3].function_call_output.output.text == "42"


async def test_a_conversation_may_start_empty(stub):
    conversation = await new_conversation(stub)
    assert conversation.metadata == {}
    listed = await stub.ListConversationItems(
        pb.ListConversationItemsRequest(conversation_id=conversation.id))
    assert (list(listed.data), listed.first_id, listed.last_id, listed.has_more) == ([], "", "", False)


async def test_a_retried_create_returns_the_first_conversation(stub, agentd):
    first = await new_conversation(stub, [text_message("hi")], request_id="create-1")
    again = await new_conversation(stub, [text_message("hi")], request_id="create-1")
    assert again == first
    assert await count(agentd, schema.conversations) == 1
    assert await count(agentd, schema.conversation_items) == 1


async def test_update_replaces_the_metadata_and_empty_clears_it(stub):
    conversation = await new_conversation(stub, metadata={"a": "1", "b": "2"})
    updated = await stub.UpdateConversation(pb.UpdateConversationRequest(
        conversation_id=conversation.id, metadata={"c": "3"}))
    assert updated.conversation.metadata == {"c": "3"}
    kept = (updated.conversation.id, updated.conversation.created_at)
    assert kept == (conversation.id, conversation.created_at)
    cleared = await stub.UpdateConversation(pb.UpdateConversationRequest(conversation_id=conversation.id))
    assert cleared.conversation.metadata == {}
    got = await stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id))
    assert got.conversation == cleared.conversation


async def test_delete_takes_the_items_with_it(stub, agentd):
    conversation = await new_conversation(stub, [text_message("hi"), text_message("again")])
    deleted = await stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conversation.id))
    assert (deleted.id, deleted.deleted) == (conversation.id, True)
    assert await count(agentd, schema.conversation_items) == 0
    code, reason, _ = await error_of(stub.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation.id)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    code, reason, _ = await error_of(stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=conversation.id)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")


# -------------------------------------------------------------------------- items


async def test_items_are_appended_after_the_existing_ones(stub):
    conversation = await new_conversation(stub, [text_message("one", item_id="msg_1")])
    created = await stub.CreateConversationItems(pb.CreateConversationItemsRequest(
        conversation_id=conversation.id, items=[text_message("two"), text_message("three", ASSISTANT)]))
    assert [i.message.content.parts.parts[0].WhichOneof("part") for i in created.data] == [
        "input_text", "output_text"]
    assert (created.first_id, created.last_id, created.has_more) == (
        item_id(created.data[0]), item_id(created.data[1]), False)
    items = await all_items(stub, conversation.id)  # newest first by default
    assert [item_id(i) for i in items] == [created.last_id, created.first_id, "msg_1"]


async def test_an_item_whose_id_is_there_already_replaces_it_in_its_place(stub):
    conversation = await new_conversation(stub, [text_message("one", item_id="msg_1"),
                                                          text_message("two", item_id="msg_2")])
    await stub.CreateConversationItems(pb.CreateConversationItemsRequest(
        conversation_id=conversation.id, items=[text_message("one, edited", item_id="msg_1")]))
    items = await all_items(stub, conversation.id, order=ASC)
    assert [(item_id(i), i.message.content.parts.parts[0].input_text.text) for i in items] == [
        ("msg_1", "one, edited"), ("msg_2", "two")]


async def test_a_retried_append_appends_nothing_and_answers_the_same_items(stub):
    conversation = await new_conversation(stub)
    request = pb.CreateConversationItemsRequest(conversation_id=conversation.id, items=[text_message("hi")],
                                                request_id="append-1")
    first = await stub.CreateConversationItems(request)
    again = await stub.CreateConversationItems(request)
    assert again == first  # the same minted id, not a new one
    assert len(await all_items(stub, conversation.id)) == 1


async def test_every_item_type_is_kept_and_read_back_as_given(stub):
    items = [
        text_message("hi", item_id="msg_a"),
        it.ResponseItem(message=it.ResponseMessage(id="msg_b", role=ASSISTANT, status=COMPLETED,
                                                   content=it.ResponseMessageContent(parts=it.ResponseContentPartList(
                                                       parts=[it.ResponseContentPart(refusal=it.ResponseRefusal(
                                                           refusal="no"))])))),
        it.ResponseItem(function_call=it.ResponseFunctionCall(id="fc_a", call_id="c", name="f",
                                                              arguments="{}",
                                                              status=COMPLETED)),
        it.ResponseItem(function_call_output=it.ResponseFunctionCallOutput(
            id="fco_a", call_id="c", output=it.ResponseFunctionCallOutputContent(text="ok"),
            status=COMPLETED)),
        it.ResponseItem(file_search_call=it.ResponseFileSearchCall(
            id="fs_a", queries=["q"], status=COMPLETED,
            results=[it.ResponseFileSearchResult(file_id="file_1", filename="a.txt", score=0.5, text="t")])),
        it.ResponseItem(web_search_call=it.ResponseWebSearchCall(
            id="ws_a", status=COMPLETED, action=it.ResponseWebSearchAction(
                search=it.ResponseWebSearchActionSearch(query="q")))),
        it.ResponseItem(mcp_list_tools=it.ResponseMcpListTools(
            id="mcpl_a", server_label="s", tools=[it.ResponseMcpToolInfo(name="t")])),
        it.ResponseItem(mcp_approval_request=it.ResponseMcpApprovalRequest(
            id="mcpr_a", server_label="s", name="t", arguments="{}")),
        it.ResponseItem(mcp_approval_response=it.ResponseMcpApprovalResponse(
            id="mcpa_a", approval_request_id="mcpr_a", approve=False, reason="no")),
        it.ResponseItem(mcp_call=it.ResponseMcpCall(id="mcp_a", server_label="s", name="t", arguments="{}",
                                                    status=COMPLETED, output="out")),
        it.ResponseItem(reasoning=it.ResponseReasoning(
            id="rs_a", status=COMPLETED, summary=[it.ResponseReasoningSummary(text="thought")])),
    ]
    conversation = await new_conversation(stub)
    created = await stub.CreateConversationItems(pb.CreateConversationItemsRequest(
        conversation_id=conversation.id, items=items))
    stored = list(created.data)
    assert stored[0].message.content.parts.parts[0].input_text.text == "hi"
    assert stored[0].message.status == COMPLETED
    assert stored[1:] == items[1:]  # complete items are kept exactly
    for item in stored:
        got = await stub.GetConversationItem(pb.GetConversationItemRequest(
            conversation_id=conversation.id, item_id=item_id(item)))
        assert got.item == item
    assert await all_items(stub, conversation.id, order=ASC) == stored


async def test_data_kept_for_include_shows_only_when_included(stub):
    logprob = it.ResponseLogprob(token="hi", logprob=-0.1)
    message = it.ResponseItem(message=it.ResponseMessage(
        id="msg_a", role=ASSISTANT, status=COMPLETED, content=it.ResponseMessageContent(
            parts=it.ResponseContentPartList(parts=[it.ResponseContentPart(
                output_text=it.ResponseOutputText(text="hi", logprobs=[logprob]))]))))
    search = it.ResponseItem(web_search_call=it.ResponseWebSearchCall(
        id="ws_a", status=COMPLETED, action=it.ResponseWebSearchAction(
            search=it.ResponseWebSearchActionSearch(
                query="q", sources=[it.ResponseWebSearchSource(url="https://example.com")]))))
    reasoning = it.ResponseItem(reasoning=it.ResponseReasoning(id="rs_a", encrypted_content="secret"))
    conversation = await new_conversation(stub, [message, search, reasoning])

    plain = await all_items(stub, conversation.id, order=ASC)
    assert list(plain[0].message.content.parts.parts[0].output_text.logprobs) == []
    assert list(plain[1].web_search_call.action.search.sources) == []
    assert not plain[2].reasoning.HasField("encrypted_content")
    include = ["message.output_text.logprobs", "web_search_call.action.sources",
               "reasoning.encrypted_content"]
    full = await all_items(stub, conversation.id, order=ASC, include=include)
    assert full[0] == message and full[1] == search and full[2].reasoning.encrypted_content == "secret"
    one = await stub.GetConversationItem(pb.GetConversationItemRequest(
        conversation_id=conversation.id, item_id="rs_a"))
    assert not one.item.reasoning.HasField("encrypted_content")
    one = await stub.GetConversationItem(pb.GetConversationItemRequest(
        conversation_id=conversation.id, item_id="rs_a", include=["reasoning.encrypted_content"]))
    assert one.item.reasoning.encrypted_content == "secret"


async def pages(stub, conversation_id: str, size: int, order) -> list[pb.ListConversationItemsResponse]:
    found, token = [], ""
    while True:
        page = await stub.ListConversationItems(pb.ListConversationItemsRequest(
            conversation_id=conversation_id, page_size=size, page_token=token, order=order))
        found.append(page)
        token = page.next_page_token
        if not token:
            return found


@pytest.mark.parametrize("order", [ASC, DESC])
async def test_pages_walk_the_items_in_order_with_a_true_has_more(stub, order):
    conversation = await new_conversation(stub, [text_message(f"{i}", item_id=f"msg_{i:02}")
                                                          for i in range(20)])
    await stub.CreateConversationItems(pb.CreateConversationItemsRequest(
        conversation_id=conversation.id,
        items=[text_message(f"{i}", item_id=f"msg_{i:02}") for i in range(20, 25)]))
    expected = [f"msg_{i:02}" for i in range(25)]
    if order == DESC:
        expected.reverse()
    walked = await pages(stub, conversation.id, 10, order)
    assert [[item_id(i) for i in page.data] for page in walked] == [
        expected[:10], expected[10:20], expected[20:]]
    assert [page.has_more for page in walked] == [True, True, False]
    assert [(page.first_id, page.last_id) for page in walked] == [
        (expected[0], expected[9]), (expected[10], expected[19]), (expected[20], expected[24])]
    # OpenAI's `after` (an item id) starts after that item, in either order.
    after = await stub.ListConversationItems(pb.ListConversationItemsRequest(
        conversation_id=conversation.id, page_size=3, order=order,
        page_token=paging.encode(paging.Cursor(after=expected[20]))))
    assert [item_id(i) for i in after.data] == expected[21:24] and after.has_more
    # The default page holds 20 items.
    default = await stub.ListConversationItems(pb.ListConversationItemsRequest(
        conversation_id=conversation.id, order=order))
    assert len(default.data) == 20 and default.has_more


async def test_items_deleted_between_pages_leave_no_gap(stub):
    conversation = await new_conversation(stub, [text_message(f"{i}", item_id=f"msg_{i}")
                                                          for i in range(6)])
    first = await stub.ListConversationItems(pb.ListConversationItemsRequest(
        conversation_id=conversation.id, page_size=3, order=ASC))
    await stub.DeleteConversationItem(pb.DeleteConversationItemRequest(
        conversation_id=conversation.id, item_id="msg_2"))  # the last of the first page
    rest = await stub.ListConversationItems(pb.ListConversationItemsRequest(
        conversation_id=conversation.id, page_size=3, order=ASC,
        page_token=first.next_page_token))
    assert [item_id(i) for i in rest.data] == ["msg_3", "msg_4", "msg_5"] and not rest.has_more


async def test_an_item_is_read_and_deleted_one_by_one(stub):
    conversation = await new_conversation(stub, [text_message("a", item_id="msg_a"),
                                                          text_message("b", item_id="msg_b")],
                                          metadata={"k": "v"})
    got = await stub.GetConversationItem(pb.GetConversationItemRequest(
        conversation_id=conversation.id, item_id="msg_b"))
    assert got.item.message.content.parts.parts[0].input_text.text == "b"
    deleted = await stub.DeleteConversationItem(pb.DeleteConversationItemRequest(
        conversation_id=conversation.id, item_id="msg_b"))
    assert deleted.conversation == conversation  # OpenAI answers with the conversation
    assert [item_id(i) for i in await all_items(stub, conversation.id)] == ["msg_a"]
    for call in (stub.GetConversationItem(pb.GetConversationItemRequest(
                     conversation_id=conversation.id, item_id="msg_b")),
                 stub.DeleteConversationItem(pb.DeleteConversationItemRequest(
                     conversation_id=conversation.id, item_id="msg_b"))):
        code, reason, _ = await error_of(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ITEM_NOT_FOUND")


async def test_an_item_of_another_conversation_is_not_found(stub):
    mine = await new_conversation(stub, [text_message("a", item_id="msg_a")])
    other = await new_conversation(stub)
    code, reason, _ = await error_of(stub.GetConversationItem(pb.GetConversationItemRequest(
        conversation_id=other.id, item_id="msg_a")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ITEM_NOT_FOUND")
    assert len(await all_items(stub, mine.id)) == 1


# ------------------------------------------------------------------------- errors


async def test_an_unknown_conversation_is_not_found_everywhere(stub):
    missing = "conv_missing"
    for call in (
        stub.GetConversation(pb.GetConversationRequest(conversation_id=missing)),
        stub.UpdateConversation(pb.UpdateConversationRequest(conversation_id=missing, metadata={"a": "b"})),
        stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=missing)),
        stub.CreateConversationItems(pb.CreateConversationItemsRequest(
            conversation_id=missing, items=[text_message("hi")])),
        stub.ListConversationItems(pb.ListConversationItemsRequest(conversation_id=missing)),
        stub.GetConversationItem(pb.GetConversationItemRequest(conversation_id=missing, item_id="msg_1")),
        stub.DeleteConversationItem(pb.DeleteConversationItemRequest(
            conversation_id=missing, item_id="msg_1")),
    ):
        code, reason, _ = await error_of(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")


def _too_many_items():
    return [text_message(f"{i}") for i in range(21)]


TWICE_THE_SAME_ID = [text_message("a", item_id="msg_1"), text_message("b", item_id="msg_1")]
BAD_CREATES = [
    (pb.CreateConversationRequest(items=_too_many_items()), "items"),
    (pb.CreateConversationRequest(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    (pb.CreateConversationRequest(metadata={"k" * 65: "v"}), "metadata"),
    (pb.CreateConversationRequest(metadata={"k": "v" * 513}), "metadata"),
    (pb.CreateConversationRequest(items=TWICE_THE_SAME_ID), "items[1].id"),
    (pb.CreateConversationRequest(items=[it.ResponseItem(item_reference=it.ResponseItemReference(id="msg_1"))]),
     "items[0].type"),
    (pb.CreateConversationRequest(items=[text_message("a", item_id="msg_" + "x" * 61)]), "items[0].id"),
    (pb.CreateConversationRequest(items=[text_message("a", item_id="msg_\x00")]), "items[0].id"),
    (pb.CreateConversationRequest(items=[it.ResponseItem(message=it.ResponseMessage(
        role=USER))]), "items[0].message.content"),
    (pb.CreateConversationRequest(items=[it.ResponseItem(function_call=it.ResponseFunctionCall(name="f"))]),
     "items[0].function_call.call_id"),
    (pb.CreateConversationRequest(request_id="r" * 256), "request_id"),
    (pb.CreateConversationRequest(items=[it.ResponseItem()]), "items[0].type"),
    (pb.CreateConversationRequest(items=[it.ResponseItem(message=it.ResponseMessage(
        role=USER, content=it.ResponseMessageContent()))]), "items[0].content"),
    (pb.CreateConversationRequest(items=[it.ResponseItem(message=it.ResponseMessage(
        role=USER, content=it.ResponseMessageContent(parts=it.ResponseContentPartList(
            parts=[it.ResponseContentPart()]))))]), "items[0].content[0].type"),
    (pb.CreateConversationRequest(items=[it.ResponseItem(function_call_output=it.ResponseFunctionCallOutput(
        call_id="c", output=it.ResponseFunctionCallOutputContent()))]), "items[0].output"),
    # An image no model's server could read would fail every later response of the conversation.
    (pb.CreateConversationRequest(items=[it.ResponseItem(message=it.ResponseMessage(
        role=USER, content=it.ResponseMessageContent(parts=it.ResponseContentPartList(parts=[
            it.ResponseContentPart(input_image=it.ResponseInputImage(image_url="ftp://x/a.png"))]))))]),
     "items[0].content[0].image_url"),
]


@pytest.mark.parametrize("request_, field", BAD_CREATES, ids=[f for _, f in BAD_CREATES])
async def test_a_bad_create_is_invalid_argument_and_writes_nothing(stub, agentd, request_, field):
    code, reason, fields = await error_of(stub.CreateConversation(request_))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", [field])
    assert await count(agentd, schema.conversations) == 0


async def test_bad_item_appends_are_invalid_argument_and_append_nothing(stub, agentd):
    conversation = await new_conversation(stub, [text_message("a")])
    for items, field in ((_too_many_items(), "items"), ([], "items"),
                         (TWICE_THE_SAME_ID, "items[1].id")):
        code, _, fields = await error_of(stub.CreateConversationItems(pb.CreateConversationItemsRequest(
            conversation_id=conversation.id, items=items)))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert await count(agentd, schema.conversation_items) == 1


async def test_bad_updates_and_reads_are_invalid_argument(stub):
    conversation = await new_conversation(stub, metadata={"k": "v"})
    cid = conversation.id
    for call, field in (
        (stub.UpdateConversation(pb.UpdateConversationRequest(
            conversation_id=cid, metadata={f"k{i}": "v" for i in range(17)})), "metadata"),
        (stub.ListConversationItems(pb.ListConversationItemsRequest(conversation_id=cid, page_size=101)),
         "page_size"),
        (stub.ListConversationItems(pb.ListConversationItemsRequest(conversation_id=cid, page_size=-1)),
         "page_size"),
        (stub.ListConversationItems(pb.ListConversationItemsRequest(
            conversation_id=cid, include=["everything"])), "include[0]"),
        (stub.ListConversationItems(pb.ListConversationItemsRequest(conversation_id=cid,
                                                                             page_token="not-a-token")),
         "page_token"),
        (stub.ListConversationItems(pb.ListConversationItemsRequest(
            conversation_id=cid, page_token=paging.encode(paging.Cursor(after="msg_nope")))), "page_token"),
        (stub.GetConversationItem(pb.GetConversationItemRequest(
            conversation_id=cid, item_id="msg_1", include=["reasoning.encrypted_content", "everything"])),
         "include[1]"),
        (stub.GetConversation(pb.GetConversationRequest(conversation_id="conv_\x00")), "conversation_id"),
        (stub.GetConversationItem(pb.GetConversationItemRequest(conversation_id=cid, item_id="\x00")),
         "item_id"),
        (stub.GetConversation(pb.GetConversationRequest()), "conversation_id"),
    ):
        code, _, fields = await error_of(call)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    got = await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))
    assert got.conversation.metadata == {"k": "v"}  # the refused update changed nothing
