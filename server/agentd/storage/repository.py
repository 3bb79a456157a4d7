"""Generic, owner-scoped row access shared by every resource.

Every query filters on the owner, so one tenant never sees another's rows: a row that exists
but belongs to someone else is indistinguishable from a missing one (NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import BigInteger, Integer, Table, and_, bindparam, delete, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from agentd.errors import InvalidArgument
from agentd.paging import Cursor, encode, foreign_token
from agentd.sensitive import redact
from agentd.storage.database import Database, Prepared

# Ids per query of `existing`: well under the bound parameters SQLite and asyncpg allow.
EXISTING_BATCH = 500


def body_of(message: Message) -> bytes:
    """The stored form of a resource: the serialized proto without its secrets (the fields
    marked `sensitive`), which live only in the memory of the run that needs them."""
    return redact(message).SerializeToString()


@dataclass(slots=True)
class Page:
    bodies: list[bytes]
    has_more: bool
    # Cursor of the next page (after the last row), None on the last page.
    next_cursor: Cursor | None
    # Ids of the first and last rows of this page ("" when empty), as OpenAI lists report them.
    first_id: str = ""
    last_id: str = ""

    @property
    def next_page_token(self) -> str:
        """The next_page_token of a List response: "" on the last page."""
        return encode(self.next_cursor) if self.next_cursor else ""


class Repository:
    def __init__(self, db: Database):
        self.db = db
        # Statements are built once per shape and executed with bound parameters: building
        # a select with its comparisons costs more than running it on SQLite.
        self._statements: dict[tuple, Any] = {}

    def _statement(self, kind: str, table: Table, parents: tuple[str, ...]):
        key = (kind, table.name, parents)
        statement = self._statements.get(key)
        if statement is None:
            where = [table.c.owner == bindparam("owner"), table.c.id == bindparam("row_id"),
                     *(table.c[name] == bindparam(name) for name in parents)]
            statement = {"body": lambda: select(table.c.body),
                         "exists": lambda: select(table.c.id),
                         "delete": lambda: delete(table)}[kind]().where(*where)
            self._statements[key] = statement
        return statement

    def _insert(self, table: Table):
        statement = self._statements.get(("insert", table.name))
        if statement is None:
            statement = self._statements[("insert", table.name)] = Prepared(insert(table))
        return statement

    async def create(self, table: Table, *, key: tuple[str, ...] = (), parent: Table | None = None,
                     parent_id: str = "", children: tuple[tuple[Table, list[dict]], ...] = (),
                     **values: Any) -> bytes | None:
        """Inserts a row and returns its body, in one transaction.

        `key` names the columns of a unique index (an idempotency key, e.g. owner and
        request_id): when a row with the same key exists, nothing is written and that row's
        body is returned: a retried create answers what the first one created, also when
        both run at once. With `parent`: None, and nothing written, when the owner has no
        such parent row. `children` (table, rows) are inserted with a new row only."""
        check = self._statement("exists", parent, ()) if parent is not None else None
        insert_row = self.insert_work(table, key=key, children=children, **values)

        def work(conn) -> bytes | None:
            parent_row = {"owner": values["owner"], "row_id": parent_id}
            if check is not None and conn.execute(check, parent_row).first() is None:
                return None
            return insert_row(conn)
        try:
            return await self.db.write(work)
        except IntegrityError:
            # Key conflicts never get here (ON CONFLICT). A parent that is gone now was deleted
            # between the check and the insert (its foreign key failed); else it is a bug.
            if parent is not None and not await self.exists(parent, values["owner"], parent_id):
                return None
            raise

    def insert_work(self, table: Table, *, key: tuple[str, ...] = (),
                    children: tuple[tuple[Table, list[dict]], ...] = (),
                    **values: Any) -> Callable[[Any], bytes]:
        """create's insert as a function of a connection, for a caller's own transaction
        (which checks the parent itself): returns the new row's body, or the body of the row
        that holds the key."""
        keyed = bool(key) and all(values[name] is not None for name in key)
        statement = self._insert_or_nothing(table, key) if keyed else self._insert(table)

        def work(conn) -> bytes:
            result = statement.run(conn, values)
            if keyed and result.first() is None:
                # The key is taken. The conflicting row is committed (ON CONFLICT waits for
                # a concurrent inserter), so this later statement sees it.
                return conn.execute(_body_by_key(table, {name: values[name] for name in key})).scalar_one()
            for child_table, rows in children:
                if rows:
                    self._insert(child_table).run(conn, rows)
            return values["body"]
        return work

    def _insert_or_nothing(self, table: Table, key: tuple[str, ...]):
        """INSERT ... ON CONFLICT (key) DO NOTHING RETURNING id: no row comes back on a
        conflict. Both dialects spell it alike; an IntegrityError is then never the key's."""
        cache_key = ("insert_or_nothing", table.name, key)
        statement = self._statements.get(cache_key)
        if statement is None:
            dialect = sqlite if self.db.is_sqlite else postgresql
            statement = Prepared(dialect.insert(table).on_conflict_do_nothing(index_elements=list(key))
                                 .returning(table.c.id))
            self._statements[cache_key] = statement
        return statement

    async def body_by_key(self, table: Table, **key: Any) -> bytes | None:
        """The body of the row that holds a unique key (e.g. owner and request_id), if any."""
        query = _body_by_key(table, key)
        return await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())

    async def get_body(self, table: Table, owner: str, row_id: str, **parents: str) -> bytes | None:
        statement = self._statement("body", table, tuple(parents))
        params = {"owner": owner, "row_id": row_id, **parents}
        return await self.db.read(lambda conn: conn.execute(statement, params).scalar_one_or_none())

    async def exists(self, table: Table, owner: str, row_id: str, **parents: str) -> bool:
        statement = self._statement("exists", table, tuple(parents))
        params = {"owner": owner, "row_id": row_id, **parents}
        return await self.db.read(lambda conn: conn.execute(statement, params).first() is not None)

    async def existing(self, table: Table, owner: str, row_ids: Sequence[str]) -> set[str]:
        """Those of the owner's rows, by id, that are still stored."""
        found: set[str] = set()
        for start in range(0, len(row_ids), EXISTING_BATCH):
            query = select(table.c.id).where(table.c.owner == owner,
                                             table.c.id.in_(list(row_ids[start:start + EXISTING_BATCH])))
            found |= await self.db.read(lambda conn, query=query: set(conn.execute(query).scalars()))
        return found

    async def delete(self, table: Table, owner: str, row_id: str, **parents: str) -> bool:
        """Deletes a row (children go with it: ON DELETE CASCADE, as many as there are, so a
        bulk write). False if there was none."""
        statement = self._statement("delete", table, tuple(parents))
        params = {"owner": owner, "row_id": row_id, **parents}
        return await self.db.write(lambda conn: conn.execute(statement, params).rowcount > 0, bulk=True)

    async def page(self, table: Table, owner: str | None, cursor: Cursor, limit: int,
                   descending: bool = False, cursor_field: str = "page_token",
                   ids: list[str] | None = None, sort: str = "created_at", id_column: str = "id",
                   **filters: str) -> Page:
        """One page in (`sort`, id) order: stable, no gaps or repeats under inserts.
        `ids`, when given, keeps only those rows. Owner None: a table without an owner
        column, whose caller has checked the owner of the parent in `filters`. `id_column`:
        the column holding the ids that cursors and first_id/last_id name."""
        scope = self._scope(table, owner, filters)
        row_id = table.c[id_column]
        if ids is not None:
            scope.append(row_id.in_(ids))
        sort_key = table.c[sort]
        order = (sort_key, row_id)
        backwards = cursor.before is not None  # walk towards the start, then flip
        anchor_id = cursor.after if cursor.after is not None else cursor.before

        if cursor.key is not None and not _fits(sort_key, cursor.key[0]):
            # A forged token: the database would refuse the comparison (an INTERNAL).
            raise foreign_token(cursor_field)

        def fetch(conn):
            query = select(row_id.label("id"), sort_key.label("sort_key"), table.c.body).where(*scope)
            anchor = cursor.key
            if anchor is None and anchor_id is not None:
                found = conn.execute(select(sort_key).where(*scope, row_id == anchor_id)).scalar()
                if found is None:
                    raise InvalidArgument(cursor_field, f"no item with id '{anchor_id}' in this list")
                anchor = (found, anchor_id)
            if anchor is not None:
                later = descending == backwards  # rows after the anchor in storage order?
                query = query.where(_beyond(sort_key, row_id, anchor[0], anchor[1], later))
            walk_desc = descending != backwards
            query = query.order_by(*(c.desc() if walk_desc else c.asc() for c in order))
            return conn.execute(query.offset(cursor.offset).limit(limit + 1)).all()

        rows = await self.db.scan(fetch)
        has_more = len(rows) > limit
        rows = rows[:limit]
        if backwards:
            rows.reverse()
        next_cursor = Cursor(key=(rows[-1].sort_key, rows[-1].id)) if has_more and rows else None
        return Page(bodies=[r.body for r in rows], has_more=has_more, next_cursor=next_cursor,
                    first_id=rows[0].id if rows else "", last_id=rows[-1].id if rows else "")

    @staticmethod
    def _scope(table: Table, owner: str | None, parents: dict[str, str]) -> list:
        owned = [table.c.owner == owner] if owner is not None else []
        return [*owned, *(table.c[name] == value for name, value in parents.items())]


def _fits(column, value: int) -> bool:
    """Whether the column holds the value: an Integer column is 32 bits on PostgreSQL."""
    if isinstance(column.type, Integer) and not isinstance(column.type, BigInteger):
        return -2**31 <= value < 2**31
    return True


def _beyond(sort_key, id_column, value: int, row_id: str, later: bool):
    if later:
        return or_(sort_key > value, and_(sort_key == value, id_column > row_id))
    return or_(sort_key < value, and_(sort_key == value, id_column < row_id))


def _body_by_key(table: Table, key: dict[str, Any]):
    return select(table.c.body).where(*(table.c[name] == value for name, value in key.items()))
