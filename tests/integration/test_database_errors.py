"""PostgreSQL's "not now" answers are UNAVAILABLE (retry), as a lost connection is: a lock
held past agentd's lock timeout, a statement timeout, and a pool whose connections all stayed
busy. The asyncpg dialect gives
them its generic Error, which the call pipeline would answer as INTERNAL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from agentd.database_url import normalize_url
from agentd.errors import Unavailable
from agentd.storage import Database


@pytest.fixture
async def postgres(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's lock and statement timeouts and its connection pool")
    database = Database(database_url, pool_timeout_s=0.3, lock_timeout_s=0.1)
    await database.migrate()
    yield database
    await database.close()


def _run(*statements: str):
    def work(conn):
        for statement in statements:
            conn.exec_driver_sql(statement)
    return work


async def test_a_lock_held_past_the_lock_timeout_is_unavailable(postgres, database_url):
    holder = create_async_engine(normalize_url(database_url))
    async with holder.connect() as conn:
        await conn.exec_driver_sql("BEGIN")
        await conn.exec_driver_sql("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Unavailable) as caught:
            await postgres.write(_run("SELECT count(*) FROM agents"))
        await conn.exec_driver_sql("ROLLBACK")
    await holder.dispose()
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    await postgres.read(_run("SELECT count(*) FROM agents"))  # and it works again


async def test_a_statement_past_its_timeout_is_unavailable(postgres):
    with pytest.raises(Unavailable):
        await postgres.write(_run("SET LOCAL statement_timeout = '20ms'", "SELECT pg_sleep(2)"))


async def test_a_pool_busy_past_its_timeout_is_unavailable(postgres):
    # Every pooled connection (10 and 20 overflow) held by a slow read: the next one waits
    # for a connection no longer than the pool's timeout.
    slow = [asyncio.create_task(postgres.read(_run("SELECT pg_sleep(3)"))) for _ in range(30)]
    await asyncio.sleep(1.5)  # (30 connections made on a loaded machine)
    with pytest.raises(Unavailable):
        await postgres.read(_run("SELECT 1"))
    await asyncio.gather(*slow)
    await postgres.read(_run("SELECT 1"))
