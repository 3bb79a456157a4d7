"""Conversations with the real openai SDK (client.conversations.*) against `agentd serve`:
what the SDK sends is understood, what agentd answers parses into the SDK's types, paging
follows has_more/last_id both ways, and errors raise the SDK's exception classes."""

from __future__ import annotations

import openai
import pytest
from openai.types.conversations import Conversation, ConversationDeletedResource, Message
from openai.types.responses import ResponseFunctionToolCallItem, ResponseFunctionToolCallOutputItem


@pytest.fixture(scope="module")
def client(agentd_process):
    with openai.OpenAI(base_url=f"{agentd_process.base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_create_with_items_retrieve_update_delete(client):
    conversation = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Hello Ada!"}],
        metadata={"topic": "names"})
    assert isinstance(conversation, Conversation)
    assert conversation.id.startswith("conv_") and conversation.object == "conversation"
    assert conversation.metadata == {"topic": "names"}
    assert client.conversations.retrieve(conversation.id) == conversation

    items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert all(isinstance(i, Message) for i in items)
    assert [(i.role, i.content[0].type, i.content[0].text, i.status) for i in items] == [
        ("user", "input_text", "My name is Ada.", "completed"),
        ("assistant", "output_text", "Hello Ada!", "completed")]

    updated = client.conversations.update(conversation.id, metadata={"topic": "greetings"})
    assert updated.metadata == {"topic": "greetings"} and updated.created_at == conversation.created_at
    assert client.conversations.update(conversation.id, metadata=None).metadata == {}

    deleted = client.conversations.delete(conversation.id)
    assert isinstance(deleted, ConversationDeletedResource)
    assert (deleted.id, deleted.object, deleted.deleted) == (conversation.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError):  # its items went with it
        client.conversations.items.list(conversation.id)


def test_items_create_list_paging_retrieve_delete(client):
    conversation = client.conversations.create()
    created = client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "user", "content": f"message {i}"} for i in range(5)])
    ids = [i.id for i in created.data]
    assert (created.first_id, created.last_id, created.has_more) == (ids[0], ids[-1], False)
    more = client.conversations.items.create(conversation.id, items=[
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "found"}])
    assert isinstance(more.data[0], ResponseFunctionToolCallItem)
    assert isinstance(more.data[1], ResponseFunctionToolCallOutputItem)
    ids += [i.id for i in more.data]

    # The SDK's auto-paging follows has_more and last_id (as `after`) to the end, both ways.
    assert [i.id for i in client.conversations.items.list(conversation.id, limit=2, order="asc")] == ids
    assert [i.id for i in client.conversations.items.list(conversation.id, limit=3)] == ids[::-1]
    first = client.conversations.items.list(conversation.id, limit=4, order="asc")
    assert first.has_more and (first.first_id, first.last_id) == (ids[0], ids[3])
    second = first.get_next_page()
    assert [i.id for i in second.data] == ids[4:] and not second.has_more
    assert [i.id for i in client.conversations.items.list(
        conversation.id, after=ids[2], limit=2, order="asc").data] == ids[3:5]

    item = client.conversations.items.retrieve(ids[0], conversation_id=conversation.id,
                                               include=["message.output_text.logprobs"])
    assert isinstance(item, Message) and item.content[0].text == "message 0"
    after_delete = client.conversations.items.delete(ids[0], conversation_id=conversation.id)
    assert isinstance(after_delete, Conversation) and after_delete.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(ids[0], conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(ids[0], conversation_id=conversation.id)


def test_bad_requests_raise_bad_request_error_naming_the_param(client):
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.create(items=[{"role": "user", "content": "x"}] * 21)
    assert caught.value.param == "items"
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.update(conversation.id, metadata={f"k{i}": "v" for i in range(17)})
    assert caught.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.items.list(conversation.id, limit=101)
    assert caught.value.param == "limit"
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.items.list(conversation.id, after="msg_not_there")
    assert caught.value.param == "after"
    with pytest.raises(openai.NotFoundError) as caught:
        client.conversations.items.create("conv_missing", items=[{"role": "user", "content": "x"}])
    assert caught.value.code == "conversation_not_found"
