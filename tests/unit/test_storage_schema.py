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
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        assert diff == []
    finally:
        await db.close()
