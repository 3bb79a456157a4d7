"""Which database URLs agentd accepts, and the driver it uses for each.

A leaf module (SQLAlchemy's URL parser only): the configuration validates URLs with it
without importing the storage package.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def normalize_url(url: str) -> URL:
    """The driver agentd uses for a URL: pysqlite for SQLite, asyncpg for PostgreSQL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # Each thread would get its own empty database: reads (inline) and writes
            # (worker threads) would never meet.
            raise ValueError("an in-memory SQLite database is not supported: give a file path")
        return parsed.set(drivername="sqlite")
    if backend == "postgresql":
        query = dict(parsed.query)
        if "sslmode" in query:  # libpq's name, as managed PostgreSQL URLs carry it; asyncpg's is ssl
            query["ssl"] = query.pop("sslmode")
        return parsed.set(drivername="postgresql+asyncpg", query=query)
    raise ValueError(f"unsupported database {parsed.drivername!r}: use sqlite:/// or postgresql://")
