"""Storage: SQLAlchemy 2 async over SQLite (embedded) or PostgreSQL, schema by Alembic."""

from agentd.storage.database import Database
from agentd.storage.repository import Page, Repository

__all__ = ["Database", "Page", "Repository"]
