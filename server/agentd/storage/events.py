"""EventStore: the numbered events of runs, kept so that a client re-attaches without gaps.

A run is a turn or a response; its events are keyed (run_id, sequence_number), where run_id
is the turn id ("turn_...") or the response id ("resp_..."). A foreign key cannot point at
either of two tables, so each row also repeats its run id in exactly one of two nullable
columns, turn_id or response_id, each a foreign key with ON DELETE CASCADE. Deleting a run,
or what holds it (a session, an agent), therefore deletes its events in the same statement,
whatever the deletion path: no store has to remember to, and no orphan events are left.

The engine writes a batch at step/item boundaries, never one write per token: `append` is
one multi-row INSERT in one transaction. `append_next` keeps one event in another store's
transaction: recovery's terminal event of a run whose process died, numbered after the
last one that process kept, in the transaction that changes the run's status.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from agentd import ids
from agentd.clock import now_micros
from agentd.errors import NotFound
from agentd.storage import schema
from agentd.storage.database import Prepared
from agentd.storage.repository import Repository

# The run's kind by its id prefix: (the run column of run_events, the run's table, its name).
_RUNS = {
    ids.TURN: ("turn_id", schema.turns, "turn"),
    ids.RESPONSE: ("response_id", schema.responses, "response"),
}


def _run_of(run_id: str):
    prefix = run_id.partition("_")[0]
    if prefix not in _RUNS:
        raise ValueError(f"not a run id (a turn or response id): {run_id!r}")
    return _RUNS[prefix]


_INSERT = Prepared(insert(schema.run_events))
_LAST = (select(func.max(schema.run_events.c.sequence_number))
         .where(schema.run_events.c.owner == bindparam("owner"),
                schema.run_events.c.run_id == bindparam("run_id")))


def _rows(owner: str, run_id: str, events: list[tuple[int, bytes]]) -> list[dict]:
    column = _run_of(run_id)[0]
    created = now_micros()
    return [{"run_id": run_id, "sequence_number": seq, "owner": owner, "turn_id": None,
             "response_id": None, column: run_id, "created_at": created, "body": body}
            for seq, body in events]


def _last_sequence(conn: Connection, owner: str, run_id: str) -> int:
    value = conn.execute(_LAST, {"owner": owner, "run_id": run_id}).scalar()
    return -1 if value is None else int(value)


def append_next(conn: Connection, owner: str, run_id: str, event: Callable[[int], bytes]) -> int:
    """In the caller's transaction: keeps `event(n)`, the run's event numbered n, right
    after its last kept event (n = 0 when none is kept); returns n. The caller's own guard
    (e.g. a status update that only one transaction can make) decides that it alone writes
    it; the unique (run_id, sequence_number) key would refuse a second one anyway."""
    number = _last_sequence(conn, owner, run_id) + 1
    _INSERT.run(conn, _rows(owner, run_id, [(number, event(number))]))
    return number


class EventStore:
    def __init__(self, repo: Repository):
        self.repo = repo
        self.db = repo.db

    async def append(self, owner: str, run_id: str, events: list[tuple[int, bytes]],
                     also: Callable[[Connection], object] | None = None) -> None:
        """Keeps a batch of (sequence_number, body) events of a run, all or none. NotFound
        when the owner has no such run (it was deleted while it ran). `also`, when given,
        is more work of the caller done first in the same transaction (e.g. the step whose
        step_complete is in the batch): one commit instead of two."""
        if not events and also is None:
            return
        _, run_table, kind = _run_of(run_id)
        rows = _rows(owner, run_id, events)

        def work(conn: Connection) -> None:
            if also is not None:
                also(conn)
            if rows:
                _INSERT.run(conn, rows)
        try:
            await self.db.write(work)
        except IntegrityError:
            # The run's foreign key, or a sequence number kept before: the latter is a bug.
            if not await self.repo.exists(run_table, owner, run_id):
                raise NotFound(kind, run_id) from None
            raise

    async def last_sequence(self, owner: str, run_id: str) -> int:
        """The number of the run's last kept event (-1 when none is kept)."""
        return await self.db.read(lambda conn: _last_sequence(conn, owner, run_id))

    async def last_event(self, owner: str, run_id: str) -> tuple[int, bytes] | None:
        """The run's last kept event as (sequence_number, body); None when none is kept."""
        events = schema.run_events
        query = (select(events.c.sequence_number, events.c.body)
                 .where(events.c.owner == owner, events.c.run_id == run_id)
                 .order_by(events.c.sequence_number.desc()).limit(1))
        row = await self.db.read(lambda conn: conn.execute(query).first())
        return None if row is None else (row.sequence_number, row.body)

    async def read_after(self, owner: str, run_id: str, starting_after: int,
                         limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` kept events numbered after `starting_after`, in order, as
        (sequence_number, body)."""
        events = schema.run_events
        query = (select(events.c.sequence_number, events.c.body)
                 .where(events.c.owner == owner, events.c.run_id == run_id,
                        events.c.sequence_number > starting_after)
                 .order_by(events.c.sequence_number).limit(limit))
        rows = await self.db.scan(lambda conn: conn.execute(query).all())
        return [(row.sequence_number, row.body) for row in rows]
