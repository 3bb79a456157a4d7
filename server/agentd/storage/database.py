"""The database handle: engines, connection settings, migrations, and how a unit of work
runs.

Every repository operation is a plain function of a SQLAlchemy Connection, run in ONE hop:
- PostgreSQL: on the asyncpg async engine, via `run_sync` (SQLAlchemy's greenlet bridge),
  so the event loop never blocks on the network.
- SQLite (embedded), with the synchronous pysqlite driver, most work runs inline on the
  event loop, since the hop to a thread and back costs more than the work:
  - point reads (`read`): in WAL mode a reader never waits on a writer, a primary-key
    read is ~0.1 ms of CPU that a thread could not run in parallel anyway (the GIL);
    measured with `make bench`, GetAgent p50 at concurrency 1 went from 2.0-2.4 ms to
    1.3-1.8 ms.
  - writes (`write`), and those reads, on the loop's own connection, kept open (a pool
    checkout per call cost ~3% of a response's CPU), which never waits for SQLite's
    locks: when another connection holds one (another process on the same file, or a
    bulk write on a thread), SQLite answers "busy" at once and the work runs again on a
    thread, where it waits its turn. Under WAL with synchronous=NORMAL a commit appends to
    the WAL without an fsync; the checkpoints, which do sync, run on a thread every
    CHECKPOINT_EVERY inline writes instead of inside a commit. A turn's two writes on a
    thread cost ~0.5-1 ms of CPU more than inline (thread wake-ups and GIL hand-offs,
    measured with `make bench`).
  - scans and bulk writes (`scan`, `write(bulk=True)`: a page of up to 1000 rows, a
    cascading delete, recovery, migrations) run on a small thread pool, since their time
    has no bound.
  Through aiosqlite, which crosses to its thread once per statement, fetch and rollback,
  a point read cost ~1.3 ms.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from agentd.database_url import normalize_url
from agentd.errors import Unavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")

# Readers run side by side under WAL; writers queue on SQLite's own lock (busy_timeout).
SQLITE_THREADS = 4
# Inline writes between two checkpoints of the WAL on a thread (a turn writes ~3 pages).
CHECKPOINT_EVERY = 200
# How long a write on a thread waits for another connection's write lock.
BUSY_TIMEOUT_MS = 5000
_SQLITE_BUSY = 5  # the primary result code of "database is locked" (extended codes add bits above)


class Database:
    def __init__(self, url: str, checkpoint_every: int = CHECKPOINT_EVERY):
        self.url = normalize_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            # One connection per worker thread, plus one for a checkpoint.
            self._sync_engine = create_engine(
                self.url, connect_args={"check_same_thread": False}, pool_size=SQLITE_THREADS + 1)
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            # The loop's own connection, for the inline reads and writes (one: the loop runs
            # one unit of work at a time), made at first use and kept.
            self._inline_engine = create_engine(
                self.url, connect_args={"check_same_thread": False}, pool_size=1)
            event.listen(self._inline_engine, "connect", _inline_pragmas)
            self._inline: Connection | None = None
            self._executor = ThreadPoolExecutor(SQLITE_THREADS, thread_name_prefix="agentd-sqlite")
            self._checkpoint_every = checkpoint_every
            self._writes_since_checkpoint = 0
            self._checkpoint: asyncio.Future | None = None
        else:
            # No pre-ping: it costs a round trip per checkout (~1 ms per call, measured with
            # make bench). A connection found dead instead fails that one call with
            # UNAVAILABLE (retryable: Database._run) and SQLAlchemy drops the pool's stale
            # connections, so the retry gets a fresh one.
            self._async_engine = create_async_engine(self.url, pool_size=10, max_overflow=20,
                                                     pool_recycle=1800)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Runs `work`, a read of a few rows by key, without a write transaction."""
        if self.is_sqlite:
            done, result = self._inline_work(work)
            if done:
                return result
        return await self._run(work, write=False)

    async def scan(self, work: Callable[[Connection], T]) -> T:
        """Runs `work`, a read that may touch many rows, without a write transaction."""
        return await self._run(work, write=False)

    async def write(self, work: Callable[[Connection], T], *, bulk: bool = False) -> T:
        """Runs `work` in one transaction: all of it is committed, or none of it. `bulk`:
        work whose size has no bound (a cascading delete, recovery), never run inline."""
        if self.is_sqlite and not bulk:
            done, result = self._inline_work(work)
            if done:
                self._wrote_inline()
                return result
        return await self._run(work, write=True)

    def _inline_work(self, work: Callable[[Connection], T]) -> tuple[bool, T | None]:
        """Runs `work` in one transaction on the loop's own connection: (True, its result),
        or (False, None) when another connection holds the lock it needs (rolled back: the
        caller runs it on a thread, where it waits). The connection is kept, not checked out
        of a pool per call: a checkout and its return cost more than a point read."""
        conn = self._inline
        if conn is None or conn.closed or conn.invalidated:
            conn = self._inline = self._inline_engine.connect()
        try:
            with conn.begin():
                return True, work(conn)
        except DBAPIError as e:
            if _busy(e):
                return False, None
            if _unavailable(e):
                raise _database_unavailable() from e
            raise

    def _wrote_inline(self) -> None:
        self._writes_since_checkpoint += 1
        if self._writes_since_checkpoint < self._checkpoint_every or self._checkpoint is not None:
            return
        self._writes_since_checkpoint = 0
        self._checkpoint = asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint_wal)
        self._checkpoint.add_done_callback(self._checkpointed)

    def _checkpoint_wal(self) -> None:
        # PASSIVE: copies what it can without waiting for readers or blocking writers.
        with self._sync_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpointed(self, done: asyncio.Future) -> None:
        self._checkpoint = None
        if not done.cancelled() and done.exception() is not None:
            # The next one retries; the WAL only grows meanwhile.
            log.warning("WAL checkpoint failed: %s", done.exception())

    async def _run(self, work: Callable[[Connection], T], write: bool) -> T:
        try:
            return await self._run_on_engine(work, write)
        except DBAPIError as e:
            if _unavailable(e):
                raise _database_unavailable() from e
            raise
        except OSError as e:  # asyncpg's connect: refused, unreachable, timed out (not wrapped)
            raise _database_unavailable() from e

    async def _run_on_engine(self, work: Callable[[Connection], T], write: bool) -> T:
        if self.is_sqlite:
            def in_thread() -> T:
                with (self._sync_engine.begin() if write else self._sync_engine.connect()) as conn:
                    return work(conn)
            return await asyncio.get_running_loop().run_in_executor(self._executor, in_thread)
        async with (self._async_engine.begin() if write else self._async_engine.connect()) as conn:
            return await conn.run_sync(work)

    async def migrate(self) -> None:
        """Brings the schema to the newest migration (idempotent)."""
        await self.write(_upgrade, bulk=True)
        log.info("database schema is current (%s)", self.url.render_as_string(hide_password=True))

    async def close(self) -> None:
        if self.is_sqlite:
            # Waiting for a write still running on a worker must not block the event loop.
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            if self._inline is not None:
                self._inline.close()
                self._inline = None
            self._sync_engine.dispose()
            self._inline_engine.dispose()
        else:
            await self._async_engine.dispose()


def _unavailable(error: DBAPIError) -> bool:
    """Whether a driver error means the database went away or stayed locked past its
    timeout: retryable, unlike a bug. Any other error (an integrity error the caller did not
    handle, bad SQL) propagates as it is: callers may catch it, and the call pipeline
    answers INTERNAL."""
    return isinstance(error, (OperationalError, InterfaceError)) or error.connection_invalidated


def _busy(error: DBAPIError) -> bool:
    """SQLite's "database is locked": another connection holds the write lock."""
    return getattr(error.orig, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY


def _database_unavailable() -> Unavailable:
    return Unavailable("The database is unavailable; retry the call.", reason="DATABASE_UNAVAILABLE")


# Servers that start together on one database take turns migrating: the first upgrades, the
# others wait for its commit and then find nothing to do. PostgreSQL: a transaction-scoped
# advisory lock. SQLite: the write lock, taken up front (pysqlite would not begin a
# transaction before DDL, so two migrators could interleave their CREATE TABLEs).
_MIGRATION_LOCK_ID = 0x61676E7464  # "agntd"


def _upgrade(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Cascading deletes need foreign keys on; WAL lets readers run beside the writer.
    cur.execute("PRAGMA foreign_keys=ON")
    _use_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _inline_pragmas(dbapi_conn, record) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    # Never wait on the loop: a locked database answers "busy" at once (the write then runs
    # on a thread), and checkpoints (fsync) are left to Database._checkpoint_wal.
    cur.execute("PRAGMA busy_timeout=0")
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def _use_wal(cur) -> None:
    """WAL is a property of the database file: set once, every later connection finds it.
    Switching needs the file to itself and SQLite answers "database is locked" at once, not
    after busy_timeout, when another connection is busy (replicas starting together on a new
    file): so look first, and retry the switch for a while."""
    for _ in range(100):
        if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA journal_mode=WAL")  # the last try raises what SQLite says
