"""Flow control: concurrency and rate limits per key, paused queues (filled in by the flow-control change).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
