"""Idempotency keys on agents, sessions, conversations and conversation item appends;
one row per step position; the run_events table.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.String(64)
REQUEST_ID = sa.String(255)


def upgrade() -> None:
    # Columns and unique indexes only: SQLite adds both in place (no table rebuild).
    op.add_column("agents", sa.Column("request_id", REQUEST_ID))
    op.create_index("uq_agents_owner_request", "agents", ["owner", "request_id"], unique=True)
    op.add_column("sessions", sa.Column("request_id", REQUEST_ID))
    op.create_index("uq_sessions_agent_request", "sessions", ["agent_id", "request_id"], unique=True)
    op.add_column("conversations", sa.Column("request_id", REQUEST_ID))
    op.create_index("uq_conversations_owner_request", "conversations", ["owner", "request_id"], unique=True)

    op.drop_index("ix_steps_turn_position", table_name="steps")
    op.create_index("uq_steps_turn_position", "steps", ["turn_id", "position"], unique=True)

    op.create_table(
        "conversation_item_requests",
        sa.Column("conversation_id", ID, sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("request_id", REQUEST_ID, primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )

    op.create_table(
        "run_events",
        sa.Column("run_id", ID, primary_key=True),
        sa.Column("sequence_number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("turn_id", ID, sa.ForeignKey("turns.id", ondelete="CASCADE")),
        sa.Column("response_id", ID, sa.ForeignKey("responses.id", ondelete="CASCADE")),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("(turn_id IS NULL) <> (response_id IS NULL)", name="ck_run_events_one_run"),
    )
    op.create_index("ix_run_events_turn", "run_events", ["turn_id"])
    op.create_index("ix_run_events_response", "run_events", ["response_id"])


def downgrade() -> None:
    op.drop_table("run_events")
    op.drop_table("conversation_item_requests")
    op.drop_index("uq_steps_turn_position", table_name="steps")
    op.create_index("ix_steps_turn_position", "steps", ["turn_id", "position"])
    for table, index in (("conversations", "uq_conversations_owner_request"),
                         ("sessions", "uq_sessions_agent_request"), ("agents", "uq_agents_owner_request")):
        op.drop_index(index, table_name=table)
        op.drop_column(table, "request_id")
