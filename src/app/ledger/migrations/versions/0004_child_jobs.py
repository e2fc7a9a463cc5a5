"""Child jobs: the job whose run made a job.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key: a parent may be pruned or discarded before its children, which stay.
    op.execute("ALTER TABLE jobs ADD COLUMN parent_id UUID")
    op.execute("CREATE INDEX ix_jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_parent")
    op.execute("ALTER TABLE jobs DROP COLUMN parent_id")
