"""Initial schema: agents, sessions, turns, steps, responses, response items,
conversations, conversation items.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)


def _owned(name, *columns):
    op.create_table(
        name,
        sa.Column("id", ID, primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        *columns,
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def upgrade() -> None:
    _owned("agents")
    op.create_index("ix_agents_owner_created", "agents", ["owner", "created_at", "id"])

    _owned("sessions",
           sa.Column("agent_id", ID, sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False))
    op.create_index("ix_sessions_agent_created", "sessions", ["agent_id", "created_at", "id"])

    _owned(
        "turns",
        sa.Column("session_id", ID, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(255)),
        sa.UniqueConstraint("session_id", "request_id", name="uq_turns_session_request"),
    )
    op.create_index("ix_turns_session_created", "turns", ["session_id", "created_at", "id"])

    _owned(
        "steps",
        sa.Column("turn_id", ID, sa.ForeignKey("turns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_steps_turn_position", "steps", ["turn_id", "position"])

    _owned(
        "responses",
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("previous_response_id", ID),
        sa.Column("conversation_id", ID),
        sa.Column("request_id", sa.String(255)),
        sa.UniqueConstraint("owner", "request_id", name="uq_responses_owner_request"),
    )
    op.create_index("ix_responses_owner_created", "responses", ["owner", "created_at", "id"])

    op.create_table(
        "response_items",
        sa.Column("response_id", ID, sa.ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("item_id", ID),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )

    _owned("conversations")
    op.create_index("ix_conversations_owner_created", "conversations", ["owner", "created_at", "id"])

    op.create_table(
        "conversation_items",
        sa.Column("conversation_id", ID, sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("id", ID, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_conversation_items_position", "conversation_items", ["conversation_id", "position"])


def downgrade() -> None:
    for table in ("conversation_items", "conversations", "response_items", "responses", "steps",
                  "turns", "sessions", "agents"):
        op.drop_table(table)
