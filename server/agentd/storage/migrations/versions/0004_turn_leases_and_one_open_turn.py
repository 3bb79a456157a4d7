"""Turns carry the lease of the replica running them, and a session has at most one open
(in_progress or awaiting_input) turn, enforced by the database for all replicas.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TURN_OPEN = "status IN ('in_progress', 'awaiting_input')"
TURN_RUNNING = "status = 'in_progress'"


def upgrade() -> None:
    # A nullable column and indexes only: SQLite adds them in place (no table rebuild).
    op.add_column("turns", sa.Column("lease_until", sa.BigInteger))
    # Two open turns in one session could only come from replicas racing before this index:
    # all but the newest are closed as interrupted (the status column is what the busy check
    # and recovery read) so the unique index can be built.
    op.execute(
        f"UPDATE turns SET status = 'interrupted' WHERE {TURN_OPEN} AND EXISTS ("
        "SELECT 1 FROM turns AS newer WHERE newer.session_id = turns.session_id "
        "AND newer.status IN ('in_progress', 'awaiting_input') "
        "AND (newer.created_at > turns.created_at "
        "OR (newer.created_at = turns.created_at AND newer.id > turns.id)))"
    )
    op.create_index("uq_turns_session_open", "turns", ["session_id"], unique=True,
                    sqlite_where=sa.text(TURN_OPEN), postgresql_where=sa.text(TURN_OPEN))
    op.create_index("ix_turns_running_lease", "turns", ["lease_until"],
                    sqlite_where=sa.text(TURN_RUNNING), postgresql_where=sa.text(TURN_RUNNING))


def downgrade() -> None:
    op.drop_index("ix_turns_running_lease", table_name="turns")
    op.drop_index("uq_turns_session_open", table_name="turns")
    op.drop_column("turns", "lease_until")
