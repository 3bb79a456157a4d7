"""The Alembic migrations build exactly the schema that storage/schema.py describes."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from agentd.storage import Database
from agentd.storage.database import MIGRATIONS
from agentd.storage.schema import metadata


async def test_migrations_match_the_schema(database_url):
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()  # idempotent: a restart applies nothing twice
        diff = await db.read(lambda conn: compare_metadata(MigrationContext.configure(conn), metadata))
        assert diff == []
    finally:
        await db.close()


async def test_replicas_starting_together_migrate_once(database_url):
    """Several servers migrating one fresh database at the same time all succeed."""
    databases = [Database(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(db.migrate() for db in databases))
        versions = await databases[0].read(
            lambda conn: conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all())
        # One row, at the newest migration (named from the scripts, so a new one needs no edit here).
        assert versions == [ScriptDirectory(str(MIGRATIONS)).get_current_head()]
    finally:
        for db in databases:
            await db.close()


async def _statuses_after_migrating(url: str, revision: str, fill, table: str) -> dict[str, str]:
    """The (id, status) of `table`'s rows once a database at `revision`, filled by `fill`,
    has been migrated to the newest schema."""
    db = Database(url)

    def upgrade(conn):
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    try:
        await db.write(upgrade)
        await db.write(fill)
        await db.migrate()
        return await db.read(lambda conn: dict(conn.exec_driver_sql(f"SELECT id, status FROM {table}").all()))
    finally:
        await db.close()


async def test_migrating_to_one_open_turn_per_session_closes_older_duplicates(empty_database_url):
    """Before 0004, replicas racing could leave two open turns in a session; the migration
    keeps the newest open and marks the others interrupted, so its unique index can be built."""
    def fill(conn):
        conn.exec_driver_sql("INSERT INTO agents (id, owner, created_at, body) VALUES ('a', 'o', 1, '')")
        conn.exec_driver_sql(
            "INSERT INTO sessions (id, owner, created_at, agent_id, body) VALUES ('s', 'o', 1, 'a', '')")
        for turn_id, created, status in (("t1", 1, "in_progress"), ("t2", 2, "awaiting_input"),
                                         ("t3", 3, "in_progress"), ("t0", 0, "completed")):
            conn.exec_driver_sql(
                "INSERT INTO turns (id, owner, created_at, session_id, status, body) "
                f"VALUES ('{turn_id}', 'o', {created}, 's', '{status}', '')")

    statuses = await _statuses_after_migrating(empty_database_url, "0003", fill, "turns")
    assert statuses == {"t0": "completed", "t1": "interrupted", "t2": "interrupted", "t3": "in_progress"}


async def test_migrating_to_one_running_response_per_conversation_ends_older_duplicates(empty_database_url):
    """Before 0006, two responses of a conversation could run at once; the migration keeps the
    newest running and marks the others failed, so its unique index can be built."""
    def fill(conn):
        for response_id, created, conversation, status in (
                ("r1", 1, "'c1'", "in_progress"), ("r2", 2, "'c1'", "queued"), ("r0", 0, "'c1'", "completed"),
                ("r3", 3, "'c2'", "in_progress"), ("r4", 4, "NULL", "in_progress"),
                ("r5", 5, "NULL", "queued")):
            conn.exec_driver_sql(
                "INSERT INTO responses (id, owner, created_at, model, status, conversation_id, body) "
                f"VALUES ('{response_id}', 'o', {created}, 'm', '{status}', {conversation}, '')")

    statuses = await _statuses_after_migrating(empty_database_url, "0005", fill, "responses")
    assert statuses == {"r0": "completed", "r1": "failed", "r2": "queued", "r3": "in_progress",
                        "r4": "in_progress", "r5": "queued"}
