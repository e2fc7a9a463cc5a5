"""Cancelling a running job: the request its worker learns of.

- `jobs.cancel_requested_at`: when an operator asked a running job to stop (NULL: never, or
  not in this run). The worker running the job learns of it by a NOTIFY on `conveyor_cancel`
  (the job id as payload) and by polling its running jobs' flags each second; the job then
  ends `cancelled` unless its task finished first. A replay clears it.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable with no default: adding it rewrites no row and holds the lock for an instant.
    op.execute("ALTER TABLE jobs ADD COLUMN cancel_requested_at TIMESTAMP WITH TIME ZONE")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN cancel_requested_at")
