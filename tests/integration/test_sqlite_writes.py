"""SQLite writes run inline on the event loop, never waiting there: a locked database sends
the write to a thread, and the WAL is checkpointed on a thread; the hot statements run on
the driver (Prepared) (storage/database.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from agentd.errors import Unavailable
from agentd.storage import Database, database
from agentd.storage.database import Prepared


def _insert(value: int):
    return lambda conn: conn.exec_driver_sql("INSERT INTO t (x) VALUES (?)", (value,)).rowcount


async def _database(path: Path, **kwargs) -> Database:
    db = Database(f"sqlite:///{path}", **kwargs)
    await db.write(lambda conn: conn.exec_driver_sql("CREATE TABLE t (x INTEGER PRIMARY KEY)"), bulk=True)
    return db


async def _values(db: Database) -> list[int]:
    return await db.read(lambda conn: [row[0] for row in conn.exec_driver_sql("SELECT x FROM t ORDER BY x")])


async def test_a_write_while_another_process_holds_the_lock_waits_off_the_loop(tmp_path):
    db = await _database(tmp_path / "a.db")
    other = sqlite3.connect(tmp_path / "a.db", check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's write in progress
    other.execute("INSERT INTO t (x) VALUES (1)")
    try:
        write = asyncio.create_task(db.write(_insert(2)))
        ticks = 0
        while ticks < 20:  # the loop keeps running while the write waits for the lock
            await asyncio.sleep(0.005)
            ticks += 1
        assert not write.done()
        threading.Timer(0.05, other.commit).start()
        assert await asyncio.wait_for(write, 5) == 1
        assert await _values(db) == [1, 2]
    finally:
        other.close()
        await db.close()


async def test_a_lock_held_past_the_busy_timeout_is_unavailable_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 100)  # the thread's wait (5 s in service)
    db = await _database(tmp_path / "a.db")
    other = sqlite3.connect(tmp_path / "a.db")
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable) as raised:
            await db.write(_insert(1))
        assert raised.value.reason == "DATABASE_UNAVAILABLE"
        other.rollback()
        assert await _values(db) == []
        assert await db.write(_insert(2)) == 1  # inline again once the lock is free
        assert await _values(db) == [2]
    finally:
        other.close()
        await db.close()


async def test_an_error_in_an_inline_write_rolls_all_of_it_back(tmp_path):
    db = await _database(tmp_path / "a.db")
    try:
        await db.write(_insert(1))

        def two_inserts(conn):
            conn.exec_driver_sql("INSERT INTO t (x) VALUES (2)")
            conn.exec_driver_sql("INSERT INTO t (x) VALUES (1)")  # the primary key is taken

        with pytest.raises(IntegrityError):
            await db.write(two_inserts)
        assert await _values(db) == [1]
        assert await db.write(_insert(3)) == 1  # the connection is usable again
        assert await _values(db) == [1, 3]
    finally:
        await db.close()


async def _wal_bytes_after(path: Path, writes: int, **kwargs) -> int:
    db = await _database(path, **kwargs)
    try:
        for value in range(writes):
            await db.write(_insert(value))
            if db._checkpoint is not None:  # begun on its thread: let it end, however loaded the machine
                await asyncio.wait([db._checkpoint])
        assert len(await _values(db)) == writes
        return (path.parent / (path.name + "-wal")).stat().st_size
    finally:
        await db.close()


async def test_the_wal_stays_bounded_under_writes_that_never_pause(tmp_path):
    """Each checkpoint on a thread races the loop's next writes, so SQLite never finds the WAL
    wholly checkpointed and never starts it over: past its limit a checkpoint empties it."""
    path = tmp_path / "busy.db"
    db = await _database(path, checkpoint_every=20, wal_limit_bytes=256 * 1024)
    wal = path.parent / (path.name + "-wal")
    try:
        largest = 0
        for value in range(6000):
            await db.write(_insert(value))
            await asyncio.sleep(0)  # the checkpoints run on their thread meanwhile, never waited for
            largest = max(largest, wal.stat().st_size)
        assert len(await _values(db)) == 6000
    finally:
        await db.close()
    # One page per commit: 24 MB if never started over. Past the limit, the writes made while
    # the TRUNCATE waits for its turn at the lock (here they never pause) still add some.
    assert largest < 8 * 1024 * 1024


async def test_inline_writes_checkpoint_the_wal_on_a_thread(tmp_path):
    """Inline commits never checkpoint (that fsyncs, on the loop); the database does it on
    a thread every so many writes, so the WAL is reused instead of growing."""
    unchecked = await _wal_bytes_after(tmp_path / "unchecked.db", 300, checkpoint_every=10**9)
    checked = await _wal_bytes_after(tmp_path / "checked.db", 300, checkpoint_every=20)
    assert unchecked > 300 * 4096  # one page per commit at least, never reused
    assert checked < unchecked / 5


# ---- Prepared: hot statements run on the driver with the SQL SQLAlchemy compiled once

_metadata = MetaData()
_rows = Table("rows", _metadata, Column("id", String, primary_key=True), Column("n", Integer, nullable=False),
              Column("kind", String), Column("body", LargeBinary), Column("at", DateTime))


async def _rows_database(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    await db.write(lambda conn: _metadata.create_all(conn), bulk=True)
    return db


async def test_a_prepared_statement_reads_and_writes_what_sqlalchemy_would(tmp_path):
    db = await _rows_database(tmp_path / "a.db")
    insert_returning = Prepared(sqlite_insert(_rows).on_conflict_do_nothing(index_elements=["id"])
                               .returning(_rows.c.id, _rows.c.body))
    insert_many = Prepared(insert(_rows))
    # A value bound in the statement itself ("b"), beside the caller's parameters.
    select_kind = Prepared(select(_rows.c.id, _rows.c.n, _rows.c.body.label("data"))
                           .where(_rows.c.kind == "b", _rows.c.n >= bindparam("least")).order_by(_rows.c.n))
    bump = Prepared(update(_rows).where(_rows.c.kind == bindparam("match")).values(n=_rows.c.n + 100))
    try:
        first = await db.write(lambda conn: insert_returning.run(
            conn, {"id": "r1", "n": 1, "kind": "a", "body": b"\x00one"}).first())
        assert (first.id, first.body) == ("r1", b"\x00one")
        again = await db.write(lambda conn: insert_returning.run(
            conn, {"id": "r1", "n": 9, "kind": "a", "body": b"x"}).first())
        assert again is None  # the conflict: nothing inserted, no row back
        await db.write(lambda conn: insert_many.run(conn, [
            {"id": f"m{n}", "n": n, "kind": "b", "body": bytes([n])} for n in range(2, 6)]))
        rows = await db.read(lambda conn: select_kind.run(conn, {"least": 3}).all())
        assert [(row.id, row.n, row.data) for row in rows] == [("m3", 3, b"\x03"), ("m4", 4, b"\x04"),
                                                                ("m5", 5, b"\x05")]
        assert await db.read(lambda conn: select_kind.run(conn, {"least": 5}).scalar()) == "m5"
        assert await db.write(lambda conn: bump.run(conn, {"match": "b"}).rowcount) == 4
        through_sqlalchemy = await db.read(lambda conn: conn.execute(
            select(_rows.c.id, _rows.c.n, _rows.c.body).order_by(_rows.c.id)).all())
        assert [tuple(row) for row in through_sqlalchemy] == [
            ("m2", 102, b"\x02"), ("m3", 103, b"\x03"), ("m4", 104, b"\x04"), ("m5", 105, b"\x05"),
            ("r1", 1, b"\x00one")]
    finally:
        await db.close()


async def test_a_failed_prepared_statement_raises_as_sqlalchemy_and_rolls_back_its_transaction(tmp_path):
    db = await _rows_database(tmp_path / "a.db")
    insert_row = Prepared(insert(_rows))

    def two_inserts(conn):
        insert_row.run(conn, {"id": "new", "n": 1})
        insert_row.run(conn, {"id": "new", "n": 2})  # the primary key is taken
    try:
        with pytest.raises(IntegrityError) as raised:
            await db.write(two_inserts)
        assert isinstance(raised.value.orig, sqlite3.IntegrityError)
        assert await db.read(lambda conn: conn.execute(select(_rows.c.id)).all()) == []
        assert await db.write(lambda conn: insert_row.run(conn, {"id": "ok", "n": 3}).rowcount) == 1
    finally:
        await db.close()


async def test_a_prepared_write_on_a_locked_database_waits_off_the_loop(tmp_path):
    db = await _rows_database(tmp_path / "a.db")
    insert_row = Prepared(insert(_rows))
    other = sqlite3.connect(tmp_path / "a.db", check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(db.write(lambda conn: insert_row.run(conn, {"id": "w", "n": 1}).rowcount))
        await asyncio.sleep(0.1)
        assert not write.done()  # busy inline: waiting on a thread, the loop free
        threading.Timer(0.05, other.commit).start()
        assert await asyncio.wait_for(write, 5) == 1
    finally:
        other.close()
        await db.close()


@pytest.mark.parametrize("statement, params, why", [
    (select(_rows.c.id).where(_rows.c.id.in_(bindparam("ids", expanding=True))), {"ids": ["a"]}, "ids"),
    (insert(_rows), {"id": "a", "n": 1, "at": None}, "at"),  # DateTime: SQLAlchemy formats it
    (select(_rows.c.at), {}, "at"),
    (select(_rows.c.id).where(_rows.c.n == bindparam("n")), {}, "no value"),
])
async def test_what_the_driver_cannot_take_as_it_is_is_not_prepared(tmp_path, statement, params, why):
    db = await _rows_database(tmp_path / "a.db")
    try:
        with pytest.raises(TypeError, match=why):
            await db.read(lambda conn: Prepared(statement).run(conn, params))
    finally:
        await db.close()


async def test_a_prepared_insert_returning_counts_the_rows_it_returned(tmp_path):
    db = await _rows_database(tmp_path / "a.db")
    insert_returning = Prepared(insert(_rows).returning(_rows.c.id))
    try:
        result = await db.write(lambda conn: insert_returning.run(conn, {"id": "a", "n": 1}))
        assert (result.rowcount, [row.id for row in result.all()]) == (1, ["a"])
    finally:
        await db.close()
