"""Turns keep what a resume needs: the turn's own settings (its create request without
messages, documents and sensitive data) and the last resume's idempotency key with the
sequence number its events started at.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns only: SQLite adds them in place (no table rebuild).
    op.add_column("turns", sa.Column("settings", sa.LargeBinary))
    op.add_column("turns", sa.Column("resume_request_id", sa.String(255)))
    op.add_column("turns", sa.Column("resume_sequence", sa.Integer))


def downgrade() -> None:
    for column in ("resume_sequence", "resume_request_id", "settings"):
        op.drop_column("turns", column)
