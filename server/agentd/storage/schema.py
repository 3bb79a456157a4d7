"""The tables, as SQLAlchemy Core. Alembic migrations (migrations/versions) create them;
tests/unit/test_storage_schema.py checks that the migrations and this file agree.

Each resource row keeps the columns the API queries on (owner, parent, created_at, id,
filters) and the resource itself as a serialized proto in `body`: one schema (the protos),
no second mapping to keep in sync, and a parse that costs microseconds.

`created_at` is integer microseconds since the epoch: exact, portable, and with `id` it gives
a total order for stable keyset paging (owner, created_at, id).
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# The turn statuses partial indexes select (storage/agents.py names the statuses).
TURN_OPEN = "status IN ('in_progress', 'awaiting_input')"
TURN_RUNNING = "status = 'in_progress'"
# The response statuses of a run (storage/responses.py: RUNNING).
RESPONSE_RUNNING = "status IN ('queued', 'in_progress')"

ID = String(64)
OWNER = String(255)
# Idempotency keys of creates: at most 255 characters (the API validates; see the protos).
REQUEST_ID = String(255)


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


# Idempotency keys are unique INDEXES, not constraints: SQLite adds an index in place but
# would have to rebuild the table for a constraint (and dropping a table cascades to its
# children when foreign keys are on). NULL keys never collide.
agents = _owned(
    "agents",
    Column("request_id", REQUEST_ID),
    indexes=[Index("ix_agents_owner_created", "owner", "created_at", "id"),
             Index("uq_agents_owner_request", "owner", "request_id", unique=True)],
)

sessions = _owned(
    "sessions",
    Column("agent_id", ID, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", REQUEST_ID),
    indexes=[Index("ix_sessions_agent_created", "agent_id", "created_at", "id"),
             Index("uq_sessions_agent_request", "agent_id", "request_id", unique=True)],
)

turns = _owned(
    "turns",
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("request_id", String(255)),
    # The turn's own settings (a CreateTurnRequest without messages, documents and sensitive
    # fields), read back by a resume; then the last resume's idempotency key and the sequence
    # number of its first event.
    Column("settings", LargeBinary),
    Column("resume_request_id", String(255)),
    Column("resume_sequence", Integer),
    # While in_progress: until when (microseconds since the epoch) the replica running it
    # vouches for it; it renews the lease while the run lives. Recovery interrupts only
    # in_progress turns whose lease expired (NULL: a row from before leases).
    Column("lease_until", BigInteger),
    indexes=[
        Index("ix_turns_session_created", "session_id", "created_at", "id"),
        UniqueConstraint("session_id", "request_id", name="uq_turns_session_request"),
        # At most one open turn per session, whichever replica starts it (SESSION_BUSY).
        Index("uq_turns_session_open", "session_id", unique=True,
              sqlite_where=text(TURN_OPEN), postgresql_where=text(TURN_OPEN)),
        # What recovery scans: the running turns, by lease.
        Index("ix_turns_running_lease", "lease_until",
              sqlite_where=text(TURN_RUNNING), postgresql_where=text(TURN_RUNNING)),
    ],
)

steps = _owned(
    "steps",
    Column("turn_id", ID, ForeignKey("turns.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    indexes=[Index("uq_steps_turn_position", "turn_id", "position", unique=True)],
)

responses = _owned(
    "responses",
    Column("model", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("previous_response_id", ID),
    Column("conversation_id", ID),
    Column("request_id", String(255)),
    # While queued or in_progress: the lease of the replica running it, as for turns.
    # Recovery ends only running responses whose lease expired (NULL: from before leases).
    Column("lease_until", BigInteger),
    indexes=[
        Index("ix_responses_owner_created", "owner", "created_at", "id"),
        UniqueConstraint("owner", "request_id", name="uq_responses_owner_request"),
        # What recovery scans: the running responses, by lease.
        Index("ix_responses_running_lease", "lease_until",
              sqlite_where=text(RESPONSE_RUNNING), postgresql_where=text(RESPONSE_RUNNING)),
        # A conversation has at most one running response, for all replicas: the next one
        # reads the items that one adds when it ends.
        Index("uq_responses_conversation_running", "conversation_id", unique=True,
              sqlite_where=text(RESPONSE_RUNNING), postgresql_where=text(RESPONSE_RUNNING)),
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
    "conversations",
    Column("request_id", REQUEST_ID),
    indexes=[Index("ix_conversations_owner_created", "owner", "created_at", "id"),
             Index("uq_conversations_owner_request", "owner", "request_id", unique=True)],
)

conversation_items = Table(
    "conversation_items", metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("id", ID, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_conversation_items_position", "conversation_id", "position"),
)

# What an idempotent CreateConversationItems appended (a ResponseItemList), so that a retry
# answers the same items without appending them again.
conversation_item_requests = Table(
    "conversation_item_requests", metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("request_id", REQUEST_ID, primary_key=True),
    Column("body", LargeBinary, nullable=False),
)

# The numbered events of a run (a turn or a response), kept for re-attaching streams. A run
# id is a turn id or a response id; exactly one of turn_id / response_id repeats it, so that
# deleting the run (or its session or agent) cascades to its events.
run_events = Table(
    "run_events", metadata,
    Column("run_id", ID, primary_key=True),
    Column("sequence_number", Integer, primary_key=True, autoincrement=False),
    Column("owner", OWNER, nullable=False),
    Column("turn_id", ID, ForeignKey("turns.id", ondelete="CASCADE")),
    Column("response_id", ID, ForeignKey("responses.id", ondelete="CASCADE")),
    Column("created_at", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    CheckConstraint("(turn_id IS NULL) <> (response_id IS NULL)", name="ck_run_events_one_run"),
    Index("ix_run_events_turn", "turn_id"),
    Index("ix_run_events_response", "response_id"),
)
