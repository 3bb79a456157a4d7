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
import collections
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Executable, LargeBinary, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
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
# SQLite starts the WAL over only when a writer finds it wholly checkpointed. A checkpoint on a
# thread races the loop's next writes, so under steady writes that never happened and the file
# grew without bound (3.4 GB after 30,000 turns). Past this size a checkpoint is a TRUNCATE: it
# holds writers back (they wait on a thread, as for any lock) until it has emptied the file.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
# How long a write on a thread waits for another connection's write lock.
BUSY_TIMEOUT_MS = 5000
# PostgreSQL: how long a statement waits for a lock (a table someone locked, a row another
# transaction holds) before it fails UNAVAILABLE. agentd's own transactions are short; a wait
# this long is someone else's, and without a bound it held calls without a deadline, a run's
# end and the shutdown for as long as the lock was held. (The migration lock is exempt.)
LOCK_TIMEOUT_S = 10.0
_SQLITE_BUSY = 5  # the primary result code of "database is locked" (extended codes add bits above)


class Database:
    def __init__(self, url: str, checkpoint_every: int = CHECKPOINT_EVERY, pool_timeout_s: float = 30.0,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, wal_limit_bytes: int = WAL_LIMIT_BYTES):
        """PostgreSQL: how long a call waits for a pooled connection (`pool_timeout_s`) and a
        statement for a lock another session holds (`lock_timeout_s`; 0: no bound) before it
        is UNAVAILABLE."""
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
            self._wal = Path(f"{self.url.database}-wal")
            self._wal_limit_bytes = wal_limit_bytes
            self._writes_since_checkpoint = 0
            self._checkpoint: asyncio.Future | None = None
        else:
            # No pre-ping: it costs a round trip per checkout (~1 ms per call, measured with
            # make bench). A connection found dead instead makes SQLAlchemy drop the pool's
            # stale connections, and the work runs again on a fresh one (_run_on_engine).
            self._async_engine = create_async_engine(
                self.url, pool_size=10, max_overflow=20, pool_recycle=1800, pool_timeout=pool_timeout_s)
            if lock_timeout_s > 0:
                # A SET once per connection, not a startup parameter (which PgBouncer refuses).
                event.listen(self._async_engine.sync_engine, "connect",
                             functools.partial(_set_lock_timeout, int(lock_timeout_s * 1000)))

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
            if self._wal_bytes() > self._wal_limit_bytes:  # see WAL_LIMIT_BYTES
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def _wal_bytes(self) -> int:
        try:
            return self._wal.stat().st_size
        except FileNotFoundError:
            return 0

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
        except (OSError, PoolTimeout) as e:
            # asyncpg's connect: refused, unreachable, timed out (not wrapped); or every pooled
            # connection stayed busy past the pool's timeout.
            raise _database_unavailable() from e

    async def _run_on_engine(self, work: Callable[[Connection], T], write: bool) -> T:
        if self.is_sqlite:
            def in_thread() -> T:
                with (self._sync_engine.begin() if write else self._sync_engine.connect()) as conn:
                    return work(conn)
            return await asyncio.get_running_loop().run_in_executor(self._executor, in_thread)
        for retry in (False, True):
            worked = False
            try:
                async with (self._async_engine.begin() if write else self._async_engine.connect()) as conn:
                    result = await conn.run_sync(work)
                    worked = True
                return result
            except DBAPIError as e:
                # A pooled connection the server had closed (its restart, a failover, an idle
                # timeout on the way): SQLAlchemy drops the pool's stale connections, and the
                # work, which never reached its commit, runs once more on a fresh one. A
                # connection lost during the commit is not retried: it may have committed.
                if retry or worked or not e.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

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


# A prepared statement as compiled for one set of parameter names: the SQL, the names in
# their positional order, and the values bound in the statement itself.
_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]


class Prepared:
    """A statement of the hot path (what every turn and response writes), run on SQLite's
    driver with the SQL that SQLAlchemy compiled for it once, in the caller's transaction.

    SQLAlchemy's work per execution (cache key, parameters processed one by one, result
    set-up) cost more than SQLite's own for these statements: a turn's two transactions
    took 1.29 ms of CPU through it against ~0.6 ms (bench/parts.py, storage). On another
    database the statement runs through SQLAlchemy as any other. The result answers
    what the callers ask of these statements: `all()`, `first()`, `scalar()`, `rowcount`.

    Only what the driver takes and gives as it is may pass: the statement is checked when
    it is compiled (no type that processes values, no expanding IN parameters), and
    TypeError says why one cannot be prepared."""

    def __init__(self, statement: Executable):
        self.statement = statement
        # Per set of parameter names: an INSERT compiles the columns it is given.
        self._compiled: dict[tuple[str, ...], _Compiled] = {}

    def run(self, conn: Connection, params: dict[str, Any] | list[dict[str, Any]]) -> Any:
        """conn.execute(statement, params); a list of parameter sets runs it once for each."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params)
        many = isinstance(params, list)
        names = tuple(params[0] if many else params)
        compiled = self._compiled.get(names) or self._compile(conn, names)
        sql, order, bound = compiled
        driver = conn.connection.driver_connection
        try:
            if many:
                return _Result(driver.executemany(sql, [_values(row, order, bound) for row in params]))
            return _Result(driver.execute(sql, _values(params, order, bound)))
        except sqlite3.Error as e:
            # As SQLAlchemy raises it (IntegrityError, OperationalError, ...), with the
            # driver's error as .orig: the callers' handling and Database's busy retry hold.
            raise DBAPIError.instance(sql, params, e, sqlite3.Error) from e

    def _compile(self, conn: Connection, names: tuple[str, ...]) -> _Compiled:
        dialect = conn.dialect
        compiled = self.statement.compile(dialect=dialect, column_keys=list(names))
        if dialect.paramstyle != "qmark" or compiled.positiontup is None:
            raise TypeError(f"cannot prepare for paramstyle {dialect.paramstyle}: {compiled}")
        for name, bind in compiled.binds.items():
            # The driver stores bytes as a BLOB as they are; SQLAlchemy wraps them first.
            processed = not isinstance(bind.type, LargeBinary) and bind.type._cached_bind_processor(dialect)
            if bind.expanding or processed:
                raise TypeError(f"cannot prepare {compiled}: parameter {name} needs SQLAlchemy")
        for column in compiled._result_columns:
            if column[3]._cached_result_processor(dialect, None) is not None:
                raise TypeError(f"cannot prepare {compiled}: column {column[0]} needs SQLAlchemy")
        bound = {name: bind.effective_value for name, bind in compiled.binds.items() if name not in names}
        order = tuple(compiled.positiontup)
        if missing := [name for name in order if name not in names and compiled.binds[name].required]:
            raise TypeError(f"no value for {missing} in {compiled}")
        prepared = self._compiled[names] = (compiled.string, order, bound)
        return prepared


def _values(params: dict[str, Any], order: tuple[str, ...], bound: dict[str, Any]) -> list[Any]:
    if not bound:
        return [params[name] for name in order]
    return [params[name] if name in params else bound[name] for name in order]


class _Result:
    """A prepared statement's outcome: its rows (read at once) and the rows it changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, cursor: sqlite3.Cursor):
        if cursor.description is None:
            self._rows: list[Any] = []
        else:
            row = _row_type(tuple(column[0] for column in cursor.description))
            self._rows = [row(*values) for values in cursor.fetchall()]
        # After the rows: a RETURNING statement counts them as they are read.
        self.rowcount = cursor.rowcount
        cursor.close()

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


@functools.cache
def _row_type(columns: tuple[str, ...]) -> type:
    """Rows with the columns as attributes, like SQLAlchemy's."""
    return collections.namedtuple("Row", columns, rename=True)  # type: ignore[misc]


# PostgreSQL's SQLSTATEs that say "not now" rather than "wrong": classes 08 (connection),
# 53 (insufficient resources: too many connections), 57 (operator intervention: shutdown,
# restart, statement timeout); lock timeout, a database not accepting connections,
# serialization failure and deadlock. The asyncpg dialect gives them all its generic Error.
_RETRYABLE_CLASSES = ("08", "53", "57")
_RETRYABLE_STATES = frozenset({"55P03", "55000", "40001", "40P01"})


def _unavailable(error: DBAPIError) -> bool:
    """Whether a driver error means the database went away, refused for now or stayed
    locked past its timeout: retryable, unlike a bug. Any other error (an integrity error
    the caller did not handle, bad SQL) propagates as it is: callers may catch it, and the
    call pipeline answers INTERNAL."""
    if isinstance(error, (OperationalError, InterfaceError)) or error.connection_invalidated:
        return True
    state = getattr(error.orig, "sqlstate", None)
    return isinstance(state, str) and (state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_STATES)


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
        # Another replica's migration may take longer than the lock timeout: wait for it.
        conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _set_lock_timeout(milliseconds: int, dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"SET lock_timeout = {max(1, milliseconds)}")
    cursor.close()


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
