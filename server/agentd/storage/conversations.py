"""ConversationStore: conversations and their items (rows of conversation_items, in
position order).

Appending items is idempotent by request_id per conversation: what the first append stored
is kept in conversation_item_requests and answered again to a retry. Deleting a
conversation cascades (foreign keys) to its items and those records.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agentd.clock import now_micros
from agentd.paging import Cursor
from agentd.storage import schema
from agentd.storage.repository import Page, Repository, body_of
from agentd.storage.responses import item_id_of
from agentd.v1 import conversations_pb2 as cv
from agentd.v1 import response_items_pb2 as item_types
from agentd.v1 import response_resource_pb2 as rt


class ConversationStore:
    def __init__(self, repo: Repository):
        self.repo = repo
        self.db = repo.db
        dialect = sqlite if self.db.is_sqlite else postgresql
        items, requests = schema.conversation_items, schema.conversation_item_requests
        # An item whose id is already in the conversation replaces it, keeping its place.
        upsert = dialect.insert(items)
        self._upsert_item = upsert.on_conflict_do_update(
            index_elements=[items.c.conversation_id, items.c.id], set_={"body": upsert.excluded.body})
        self._claim_request = (dialect.insert(requests).on_conflict_do_nothing()
                               .returning(requests.c.request_id))

    async def create(self, owner: str, conversation: cv.Conversation, items: list[item_types.ResponseItem],
                     request_id: str | None = None) -> cv.Conversation:
        """Stores a new conversation with its first items, in one transaction. With a
        request_id already used by this owner, stores nothing and returns the conversation
        the first call created."""
        created = now_micros()
        rows = [{"conversation_id": conversation.id, "id": item_id_of(item), "position": i,
                 "created_at": created, "body": body_of(item)} for i, item in enumerate(items)]
        body = await self.repo.create(
            schema.conversations, key=("owner", "request_id"),
            children=((schema.conversation_items, rows),), id=conversation.id, owner=owner,
            created_at=created, request_id=request_id, body=body_of(conversation))
        return cv.Conversation.FromString(body)

    async def get(self, owner: str, conversation_id: str) -> cv.Conversation | None:
        body = await self.repo.get_body(schema.conversations, owner, conversation_id)
        return cv.Conversation.FromString(body) if body is not None else None

    async def update_metadata(self, owner: str, conversation_id: str,
                              metadata: Mapping[str, str]) -> cv.Conversation | None:
        """Replaces the conversation's metadata and returns the conversation; None if the
        owner has no such conversation. Read and write are one transaction (the row locked
        on PostgreSQL), so two updates never mix."""
        table = schema.conversations
        owned = (table.c.owner == owner, table.c.id == conversation_id)
        read = select(table.c.body).where(*owned).with_for_update()

        def work(conn) -> cv.Conversation | None:
            body = conn.execute(read).scalar_one_or_none()
            if body is None:
                return None
            conversation = cv.Conversation.FromString(body)
            conversation.metadata.clear()
            conversation.metadata.update(metadata)
            conn.execute(update(table).where(*owned).values(body=body_of(conversation)))
            return conversation
        return await self.db.write(work)

    async def delete(self, owner: str, conversation_id: str) -> bool:
        return await self.repo.delete(schema.conversations, owner, conversation_id)

    async def append_items(self, owner: str, conversation_id: str, items: list[item_types.ResponseItem],
                           request_id: str | None = None) -> list[item_types.ResponseItem] | None:
        """Appends items after the conversation's last one, in one transaction, and returns
        them; None if the owner has no such conversation. With a request_id already used in
        this conversation, appends nothing and returns what the first call appended."""
        conversations, table = schema.conversations, schema.conversation_items
        requests = schema.conversation_item_requests
        # Locks the conversation (PostgreSQL; SQLite writers are serial): positions of two
        # appends never interleave.
        owned = (select(conversations.c.id)
                 .where(conversations.c.owner == owner, conversations.c.id == conversation_id)
                 .with_for_update())
        last = select(func.max(table.c.position)).where(table.c.conversation_id == conversation_id)
        appended = body_of(rt.ResponseItemList(items=items))

        def work(conn) -> list[item_types.ResponseItem] | None:
            if conn.execute(owned).first() is None:
                return None
            if request_id is not None:
                claimed = conn.execute(self._claim_request, {"conversation_id": conversation_id,
                                                             "request_id": request_id, "body": appended})
                if claimed.first() is None:  # a retry: answer what the first call appended
                    first = conn.execute(select(requests.c.body).where(
                        requests.c.conversation_id == conversation_id, requests.c.request_id == request_id))
                    return list(rt.ResponseItemList.FromString(first.scalar_one()).items)
            start = conn.execute(last).scalar()
            start = 0 if start is None else start + 1
            created = now_micros()
            conn.execute(self._upsert_item, [
                {"conversation_id": conversation_id, "id": item_id_of(item), "position": start + i,
                 "created_at": created, "body": body_of(item)} for i, item in enumerate(items)])
            return list(items)
        return await self.db.write(work)

    async def list_items(self, owner: str, conversation_id: str, cursor: Cursor, limit: int,
                         descending: bool = True) -> tuple[list[item_types.ResponseItem], Page] | None:
        """A page of the conversation's items in position order (newest first by default);
        None if the owner has no such conversation."""
        if not await self.repo.exists(schema.conversations, owner, conversation_id):
            return None
        page = await self.repo.page(schema.conversation_items, None, cursor, limit, descending=descending,
                                    sort="position", conversation_id=conversation_id)
        return [item_types.ResponseItem.FromString(b) for b in page.bodies], page

    async def get_item(self, owner: str, conversation_id: str,
                       item_id: str) -> item_types.ResponseItem | None:
        conversations, items = schema.conversations, schema.conversation_items
        query = (select(items.c.body).join(conversations, conversations.c.id == items.c.conversation_id)
                 .where(conversations.c.owner == owner, items.c.conversation_id == conversation_id,
                        items.c.id == item_id))
        body = await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())
        return item_types.ResponseItem.FromString(body) if body is not None else None

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        conversations, items = schema.conversations, schema.conversation_items
        owned = select(conversations.c.id).where(conversations.c.owner == owner,
                                                  conversations.c.id == conversation_id)
        statement = delete(items).where(items.c.conversation_id.in_(owned), items.c.id == item_id)
        return await self.db.write(lambda conn: conn.execute(statement).rowcount > 0)
