"""The tables, as SQLAlchemy Core. Alembic migrations (migrations/versions) create them;
tests/unit/test_storage_schema.py checks that the migrations and this file agree.

Each resource row keeps the columns the API queries on (owner, parent, created_at, id,
filters) and the resource itself as a serialized proto in `body`: one schema (the protos),
no second mapping to keep in sync, and a parse that costs microseconds.

`created_at` is integer microseconds since the epoch: exact, portable, and with `id` it gives
a total order for stable keyset paging (owner, created_at, id).
"""

from sqlalchemy import (BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, MetaData,
                        String, Table, UniqueConstraint)

metadata = MetaData()

ID = String(64)
OWNER = String(255)


def _owned(name: str, *columns, indexes=()) -> Table:
    return Table(
        name, metadata,
        Column("id", ID, primary_key=True),
        Column("owner", OWNER, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        *columns,
        Column("body", LargeBinary, nullable=False),
        *indexes,
    )


agents = _owned("agents", indexes=[Index("ix_agents_owner_created", "owner", "created_at", "id")])

sessions = _owned(
    "sessions",
    Column("agent_id", ID, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    indexes=[Index("ix_sessions_agent_created", "agent_id", "created_at", "id")],
)

turns = _owned(
    "turns",
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("request_id", String(255)),
    indexes=[
        Index("ix_turns_session_created", "session_id", "created_at", "id"),
        UniqueConstraint("session_id", "request_id", name="uq_turns_session_request"),
    ],
)

steps = _owned(
    "steps",
    Column("turn_id", ID, ForeignKey("turns.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    indexes=[Index("ix_steps_turn_position", "turn_id", "position")],
)

responses = _owned(
    "responses",
    Column("model", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("previous_response_id", ID),
    Column("conversation_id", ID),
    Column("request_id", String(255)),
    indexes=[
        Index("ix_responses_owner_created", "owner", "created_at", "id"),
        UniqueConstraint("owner", "request_id", name="uq_responses_owner_request"),
    ],
)

response_items = Table(
    "response_items", metadata,
    Column("response_id", ID, ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(8), primary_key=True),  # "input" or "output"
    Column("position", Integer, primary_key=True),
    Column("item_id", ID),
    Column("body", LargeBinary, nullable=False),
)

conversations = _owned(
    "conversations", indexes=[Index("ix_conversations_owner_created", "owner", "created_at", "id")])

conversation_items = Table(
    "conversation_items", metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("id", ID, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_conversation_items_position", "conversation_id", "position"),
)
