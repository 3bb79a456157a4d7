"""The Alembic migrations build exactly the schema that storage/schema.py describes."""

from __future__ import annotations

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
