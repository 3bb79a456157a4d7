"""The Alembic migrations build exactly the schema that storage/schema.py describes."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from agentd.storage import Database
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
        version = await databases[0].read(
            lambda conn: conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one())
        assert version == "0004"
    finally:
        for db in databases:
            await db.close()
