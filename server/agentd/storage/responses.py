"""ResponseStore: responses and their input items.

A running (queued or in_progress) response carries the lease of the replica that runs it
(`lease_until`, as turns do): that replica renews it while the run lives, and recovery
ends only running responses whose lease expired (rows without one count as expired).

A response's output items are part of its body: the engine rewrites the body (update) at
each item boundary, so a crash loses at most the item in flight. Its input items are rows of
`response_items` (kind "input", in position order): they are listed on their own
(ListResponseInputItems) and rebuilt into the next response's history (previous_response_id).

Deleting a response cascades (foreign keys) to its items and its run events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, bindparam, delete, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from agentd.clock import now_micros
from agentd.paging import Cursor
from agentd.storage import schema
from agentd.storage.database import Prepared
from agentd.storage.events import append_next
from agentd.storage.repository import Page, Repository, body_of
from agentd.v1 import response_items_pb2 as item_types
from agentd.v1 import response_resource_pb2 as rt

INPUT = "input"
# The stored statuses of a response that has not ended.
RUNNING = ("queued", "in_progress")


class ConversationBusy(Exception):
    """The conversation already has a running (queued or in_progress) response: the
    database holds at most one per conversation, whichever replica started it."""


def item_id_of(item: item_types.ResponseItem) -> str:
    return getattr(item, item.WhichOneof("item")).id


def status_name(status: int) -> str:
    """A ResponseStatus as OpenAI and the status column spell it ("in_progress", ...)."""
    return rt.ResponseStatus.Name(status).removeprefix("RESPONSE_STATUS_").lower()


# Built once: building the statement cost more than running it on SQLite.
_UPDATE = (update(schema.responses)
           .where(schema.responses.c.owner == bindparam("row_owner"),
                  schema.responses.c.id == bindparam("row_id"))
           .values(status=bindparam("new_status"), body=bindparam("new_body")))


# Still running, and its lease expired before `now` (or it has none): what recovery may end.
# The status test is the partial index's own text: SQLite uses that index only then.
_EXPIRED = (text(schema.RESPONSE_RUNNING),
            or_(schema.responses.c.lease_until.is_(None), schema.responses.c.lease_until < bindparam("now")))
_UPDATE_RUNNING = _UPDATE.where(schema.responses.c.status.in_(RUNNING))
_END_EXPIRED = _UPDATE.where(*_EXPIRED)
_PREPARED_UPDATE = Prepared(_UPDATE)
_DELETE_EXPIRED = delete(schema.responses).where(schema.responses.c.owner == bindparam("row_owner"),
                                                 schema.responses.c.id == bindparam("row_id"), *_EXPIRED)


def _update_values(owner: str, response: rt.Response) -> dict[str, object]:
    """The parameters of _UPDATE (and the statements made from it) for a response as it is."""
    return {"row_owner": owner, "row_id": response.id, "new_status": status_name(response.status),
            "new_body": body_of(response)}


class ResponseStore:
    def __init__(self, repo: Repository):
        self.repo = repo
        self.db = repo.db

    async def create(self, owner: str, response: rt.Response, input_items: list[item_types.ResponseItem],
                     request_id: str | None = None, lease_until: int | None = None) -> rt.Response:
        """Stores a new response with its input items, in one transaction, leased until
        `lease_until` (its run starts here). With a request_id already used by this owner,
        stores nothing and returns the response the first call created. ConversationBusy,
        and nothing stored: its conversation has a running response."""
        items = [{"response_id": response.id, "kind": INPUT, "position": i, "item_id": item_id_of(item),
                  "body": body_of(item)} for i, item in enumerate(input_items)]
        try:
            body = await self.repo.create(
                schema.responses, key=("owner", "request_id"), children=((schema.response_items, items),),
                id=response.id, owner=owner, created_at=now_micros(), model=response.model,
                status=status_name(response.status), request_id=request_id,
                previous_response_id=response.previous_response_id or None,
                conversation_id=response.conversation.id or None, lease_until=lease_until,
                body=body_of(response))
        except IntegrityError:
            # The one-running-response index (the key's conflicts never raise: ON CONFLICT).
            # It may be checked before the key: a concurrent retry with the same request_id
            # may be what holds it, and then that response is the answer.
            if request_id is not None and (first := await self.repo.body_by_key(
                    schema.responses, owner=owner, request_id=request_id)) is not None:
                return rt.Response.FromString(first)
            if response.conversation.id and await self._running_in(response.conversation.id):
                raise ConversationBusy(response.conversation.id) from None
            raise
        return rt.Response.FromString(body)

    async def _running_in(self, conversation_id: str) -> bool:
        responses = schema.responses
        query = select(responses.c.id).where(responses.c.conversation_id == conversation_id,
                                             responses.c.status.in_(RUNNING))
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def update(self, owner: str, response: rt.Response) -> bool:
        """Replaces a response's body (with its output so far) and status. False if the owner
        has no such response."""
        return await self.db.write(self.update_work(owner, response))

    def update_work(self, owner: str, response: rt.Response, *, if_running: bool = False
                    ) -> Callable[[Connection], bool]:
        """The update as work for a transaction of the caller's (Run.flush's `also`), with
        the response as it is now. `if_running`: only if it is still queued or in progress
        (an end written late must not replace one a cancel stored meanwhile)."""
        values = _update_values(owner, response)
        if if_running:
            return lambda conn: conn.execute(_UPDATE_RUNNING, values).rowcount > 0
        return lambda conn: _PREPARED_UPDATE.run(conn, values).rowcount > 0

    async def renew_leases(self, response_ids: list[str], lease_until: int) -> dict[str, str | None]:
        """The replica running these responses vouches for them until `lease_until` (those
        still running). Returns those another replica ended meanwhile, with their status
        (cancelled by a CancelResponse it served, failed by its recovery; None: deleted, by
        a DeleteResponse or, store=false, by recovery): their runs must stop."""
        responses = schema.responses
        renew = (update(responses).where(responses.c.id.in_(response_ids), responses.c.status.in_(RUNNING))
                 .values(lease_until=lease_until))
        statuses = select(responses.c.id, responses.c.status).where(responses.c.id.in_(response_ids))

        def work(conn: Connection) -> dict[str, str | None]:
            conn.execute(renew)
            found = dict(conn.execute(statuses).all())
            return {response_id: found.get(response_id) for response_id in response_ids
                    if found.get(response_id) not in RUNNING}
        return await self.db.write(work)

    async def runs_elsewhere(self, owner: str, response_id: str, now: int) -> bool:
        """Whether the response is running under a lease that has not expired: a live
        replica runs it (when it does not run here)."""
        responses = schema.responses
        query = select(responses.c.id).where(responses.c.owner == owner, responses.c.id == response_id,
                                             responses.c.status.in_(RUNNING), responses.c.lease_until >= now)
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def request_cancel(self, owner: str, cancelled: rt.Response) -> bool:
        """Asks the replica running the response to cancel it: it is stored as `cancelled`
        (its status too) now, in case that replica dies first; that replica sees it at its
        next lease renewal, and its run then ends and keeps response.failed. False if the
        response is no longer running."""
        values = _update_values(owner, cancelled)
        return await self.db.write(lambda conn: conn.execute(_UPDATE_RUNNING, values).rowcount > 0)

    async def expired(self, now: int) -> list[tuple[str, rt.Response]]:
        """Every (owner, response) of any owner still running whose lease expired before
        `now` (its replica died, or stopped renewing)."""
        query = select(schema.responses.c.owner, schema.responses.c.body).where(*_EXPIRED)
        rows = await self.db.scan(lambda conn: conn.execute(query, {"now": now}).all())
        return [(row.owner, rt.Response.FromString(row.body)) for row in rows]

    async def end_expired(self, owner: str, response: rt.Response, now: int,
                          terminal: Callable[[int], bytes]) -> bool:
        """Recovery: stores the response as ended (its body and status) with `terminal(n)`,
        its terminal event numbered n right after the last event its run kept (the engine
        builds it: storage knows no event's form), in one transaction, and only if it is
        still running with its lease expired before `now`. That guard decides who writes:
        of two replicas recovering at once, one does; the other (False) writes nothing; and
        a lease its replica renewed since the scan keeps the response running."""
        values = {**_update_values(owner, response), "now": now}

        def work(conn: Connection) -> bool:
            if conn.execute(_END_EXPIRED, values).rowcount == 0:
                return False
            append_next(conn, owner, response.id, terminal)
            return True
        return await self.db.write(work)

    async def delete_expired(self, owner: str, response_id: str, now: int) -> bool:
        """Recovery of a store=false response: deleted (with its items and events) only if
        it is still running with its lease expired before `now` (the guard of end_expired)."""
        values = {"row_owner": owner, "row_id": response_id, "now": now}
        return await self.db.write(lambda conn: conn.execute(_DELETE_EXPIRED, values).rowcount > 0, bulk=True)

    async def status(self, owner: str, response_id: str) -> str | None:
        """The stored status column ("in_progress", "completed", ...); None if no such response."""
        responses = schema.responses
        query = select(responses.c.status).where(responses.c.owner == owner, responses.c.id == response_id)
        return await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())

    async def running_on_conversation(self, owner: str, conversation_id: str) -> str | None:
        """The id of the conversation's queued or in-progress response, if any (at most one:
        uq_responses_conversation_running)."""
        responses = schema.responses
        query = select(responses.c.id).where(responses.c.owner == owner,
                                             responses.c.conversation_id == conversation_id,
                                             responses.c.status.in_(RUNNING))
        return await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())

    async def is_stored(self, owner: str, response_id: str) -> bool:
        return await self.repo.exists(schema.responses, owner, response_id)

    async def get(self, owner: str, response_id: str) -> rt.Response | None:
        body = await self.repo.get_body(schema.responses, owner, response_id)
        return rt.Response.FromString(body) if body is not None else None

    async def existing(self, owner: str, response_ids: Sequence[str]) -> set[str]:
        """Those of the owner's responses that are still stored."""
        return await self.repo.existing(schema.responses, owner, response_ids)

    async def list(self, owner: str, cursor: Cursor, limit: int, descending: bool = True,
                   model: str | None = None) -> tuple[list[rt.Response], Page]:
        """A page of the owner's responses by creation time (newest first by default),
        only those of `model` when given."""
        filters = {"model": model} if model is not None else {}
        page = await self.repo.page(schema.responses, owner, cursor, limit, descending=descending, **filters)
        return [rt.Response.FromString(b) for b in page.bodies], page

    async def delete(self, owner: str, response_id: str) -> bool:
        return await self.repo.delete(schema.responses, owner, response_id)

    async def inputs_of(self, owner: str,
                        response_ids: list[str]) -> dict[str, list[item_types.ResponseItem]]:
        """The input items of several of the owner's responses (a page of ListResponses) in one
        read: response id -> its items in order (missing ids are left out)."""
        responses, items = schema.responses, schema.response_items
        query = (select(items.c.response_id, items.c.body)
                 .join(responses, responses.c.id == items.c.response_id)
                 .where(responses.c.owner == owner, items.c.response_id.in_(response_ids),
                        items.c.kind == INPUT)
                 .order_by(items.c.response_id, items.c.position))
        found: dict[str, list[item_types.ResponseItem]] = {}
        if not response_ids:
            return found
        for row in await self.db.scan(lambda conn: conn.execute(query).all()):
            found.setdefault(row.response_id, []).append(item_types.ResponseItem.FromString(row.body))
        return found

    async def input_items_page(self, owner: str, response_id: str, cursor: Cursor, limit: int,
                               descending: bool = True) -> tuple[list[item_types.ResponseItem], Page] | None:
        """A page of the response's input items in position order (the last first by default),
        read in SQL: a listing never loads the rest of a long input. None if the owner has no
        such response."""
        if not await self.repo.exists(schema.responses, owner, response_id):
            return None
        page = await self.repo.page(schema.response_items, None, cursor, limit, descending=descending,
                                    sort="position", id_column="item_id", response_id=response_id, kind=INPUT)
        return [item_types.ResponseItem.FromString(b) for b in page.bodies], page

    async def input_items(self, owner: str, response_id: str) -> list[item_types.ResponseItem] | None:
        """The response's input items in order; None if the owner has no such response."""
        responses, items = schema.responses, schema.response_items
        owned = select(responses.c.id).where(responses.c.owner == owner, responses.c.id == response_id)
        query = (select(items.c.body).where(items.c.response_id == response_id, items.c.kind == INPUT)
                 .order_by(items.c.position))

        def work(conn):
            if conn.execute(owned).first() is None:
                return None
            return [item_types.ResponseItem.FromString(b) for b in conn.execute(query).scalars()]
        return await self.db.scan(work)
