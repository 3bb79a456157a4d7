"""SQLite writes run inline on the event loop, never waiting there: a locked database sends
the write to a thread, and the WAL is checkpointed on a thread (storage/database.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from agentd.errors import Unavailable
from agentd.storage import Database, database


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
            await asyncio.sleep(0)  # a checkpoint runs on a thread meanwhile
            if value % 10 == 9:
                await asyncio.sleep(0.01)
        assert len(await _values(db)) == writes
        return (path.parent / (path.name + "-wal")).stat().st_size
    finally:
        await db.close()


async def test_inline_writes_checkpoint_the_wal_on_a_thread(tmp_path):
    """Inline commits never checkpoint (that fsyncs, on the loop); the database does it on
    a thread every so many writes, so the WAL is reused instead of growing."""
    unchecked = await _wal_bytes_after(tmp_path / "unchecked.db", 300, checkpoint_every=10**9)
    checked = await _wal_bytes_after(tmp_path / "checked.db", 300, checkpoint_every=20)
    assert unchecked > 300 * 4096  # one page per commit at least, never reused
    assert checked < unchecked / 5
