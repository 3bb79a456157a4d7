"""Responses carry the lease of the replica running them, as turns do (0004): recovery ends
only the queued or in_progress responses whose lease expired.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RESPONSE_RUNNING = "status IN ('queued', 'in_progress')"


def upgrade() -> None:
    # A nullable column and an index only: SQLite adds them in place (no table rebuild).
    # Rows from before leases have none: they count as expired.
    op.add_column("responses", sa.Column("lease_until", sa.BigInteger))
    op.create_index("ix_responses_running_lease", "responses", ["lease_until"],
                    sqlite_where=sa.text(RESPONSE_RUNNING), postgresql_where=sa.text(RESPONSE_RUNNING))


def downgrade() -> None:
    op.drop_index("ix_responses_running_lease", table_name="responses")
    op.drop_column("responses", "lease_until")
