"""A conversation has at most one running (queued or in_progress) response, enforced by the
database for all replicas, as a session has at most one open turn (0004).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RESPONSE_RUNNING = "status IN ('queued', 'in_progress')"


def upgrade() -> None:
    # Two running responses in one conversation could only come from before this index: all
    # but the newest are ended as failed (the status column is what the runs' leases and
    # recovery read; a replica still running one stops it at its next renewal) so that the
    # unique index can be built.
    op.execute(
        f"UPDATE responses SET status = 'failed' WHERE {RESPONSE_RUNNING} AND conversation_id IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM responses AS newer "
        "WHERE newer.conversation_id = responses.conversation_id "
        "AND newer.status IN ('queued', 'in_progress') "
        "AND (newer.created_at > responses.created_at "
        "OR (newer.created_at = responses.created_at AND newer.id > responses.id)))"
    )
    op.create_index("uq_responses_conversation_running", "responses", ["conversation_id"], unique=True,
                    sqlite_where=sa.text(RESPONSE_RUNNING), postgresql_where=sa.text(RESPONSE_RUNNING))


def downgrade() -> None:
    op.drop_index("uq_responses_conversation_running", table_name="responses")
