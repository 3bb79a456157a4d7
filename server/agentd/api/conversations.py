"""ConversationsService: conversations and their items (OpenAI's Conversations API), kept by
the ConversationStore, which responses created with `conversation` append to as well."""

from __future__ import annotations

from agentd import ids, paging
from agentd.api.fields import no_nul, request_id_of
from agentd.clock import now_micros
from agentd.context import principal
from agentd.engine.items import check_include, stored_items, with_include
from agentd.engine.metadata import check_metadata
from agentd.engine.responses.engine import ResponseEngine
from agentd.errors import InvalidArgument, NotFound
from agentd.storage.conversations import ConversationStore
from agentd.storage.responses import item_id_of
from agentd.v1 import common_pb2, conversations_pb2_grpc
from agentd.v1 import conversations_pb2 as pb

# OpenAI's cap on the items one call adds (create and items.create); a conversation itself
# may hold any number.
MAX_ITEMS_PER_CALL = 20


def _items_to_add(items) -> list:
    if len(items) > MAX_ITEMS_PER_CALL:
        raise InvalidArgument("items", f"at most {MAX_ITEMS_PER_CALL} items per call, got {len(items)}")
    return stored_items(items)


class ConversationsServicer(conversations_pb2_grpc.ConversationsServiceServicer):
    def __init__(self, store: ConversationStore, responses: ResponseEngine):
        self.store = store
        self.responses = responses  # a delete stops the conversation's running response

    async def CreateConversation(self, request: pb.CreateConversationRequest, context):
        check_metadata(request.metadata)
        items = _items_to_add(request.items)
        request_id = request_id_of(request)
        conversation = pb.Conversation(id=ids.new_id(ids.CONVERSATION), created_at=now_micros() // 1_000_000,
                                       metadata=request.metadata)
        conversation = await self.store.create(principal.get(), conversation, items, request_id)
        return pb.CreateConversationResponse(conversation=conversation)

    async def GetConversation(self, request: pb.GetConversationRequest, context):
        return pb.GetConversationResponse(conversation=await self._conversation(request.conversation_id))

    async def UpdateConversation(self, request: pb.UpdateConversationRequest, context):
        conversation_id = no_nul(request.conversation_id, "conversation_id")
        check_metadata(request.metadata)
        conversation = await self.store.update_metadata(principal.get(), conversation_id, request.metadata)
        if conversation is None:
            raise NotFound("conversation", conversation_id)
        return pb.UpdateConversationResponse(conversation=conversation)

    async def DeleteConversation(self, request: pb.DeleteConversationRequest, context):
        conversation_id = no_nul(request.conversation_id, "conversation_id")
        if not await self.responses.delete_conversation(principal.get(), conversation_id):
            raise NotFound("conversation", conversation_id)
        return pb.DeleteConversationResponse(id=conversation_id, deleted=True)

    # ------------------------------------------------------------------- items

    async def CreateConversationItems(self, request: pb.CreateConversationItemsRequest, context):
        conversation_id = no_nul(request.conversation_id, "conversation_id")
        items = _items_to_add(request.items)
        appended = await self.store.append_items(principal.get(), conversation_id, items,
                                                 request_id_of(request))
        if appended is None:
            raise NotFound("conversation", conversation_id)
        return pb.CreateConversationItemsResponse(data=appended, first_id=item_id_of(appended[0]),
                                                  last_id=item_id_of(appended[-1]), has_more=False)

    async def ListConversationItems(self, request: pb.ListConversationItemsRequest, context):
        conversation_id = no_nul(request.conversation_id, "conversation_id")
        limit = paging.openai_limit(request.page_size)
        include = check_include(request.include)
        cursor = paging.decode(request.page_token)
        listed = await self.store.list_items(principal.get(), conversation_id, cursor, limit,
                                             descending=request.order != common_pb2.SORT_ORDER_ASC)
        if listed is None:
            raise NotFound("conversation", conversation_id)
        items, page = listed
        return pb.ListConversationItemsResponse(
            data=[with_include(item, include) for item in items], first_id=page.first_id,
            last_id=page.last_id, has_more=page.has_more, next_page_token=page.next_page_token)

    async def GetConversationItem(self, request: pb.GetConversationItemRequest, context):
        conversation_id = no_nul(request.conversation_id, "conversation_id")
        item_id = no_nul(request.item_id, "item_id")
        include = check_include(request.include)
        item = await self.store.get_item(principal.get(), conversation_id, item_id)
        if item is None:
            raise await self._not_found(conversation_id, item_id)
        return pb.GetConversationItemResponse(item=with_include(item, include))

    async def DeleteConversationItem(self, request: pb.DeleteConversationItemRequest, context):
        conversation_id = no_nul(request.conversation_id, "conversation_id")
        item_id = no_nul(request.item_id, "item_id")
        if not await self.store.delete_item(principal.get(), conversation_id, item_id):
            raise await self._not_found(conversation_id, item_id)
        # OpenAI answers with the conversation the item was deleted from.
        return pb.DeleteConversationItemResponse(conversation=await self._conversation(conversation_id))

    async def _conversation(self, conversation_id: str) -> pb.Conversation:
        conversation_id = no_nul(conversation_id, "conversation_id")
        conversation = await self.store.get(principal.get(), conversation_id)
        if conversation is None:
            raise NotFound("conversation", conversation_id)
        return conversation

    async def _not_found(self, conversation_id: str, item_id: str) -> NotFound:
        """The NOT_FOUND for an item that is missing: its conversation's, when that is missing
        too (looked up only on this failure path)."""
        if await self.store.get(principal.get(), conversation_id) is None:
            return NotFound("conversation", conversation_id)
        return NotFound("item", item_id)
