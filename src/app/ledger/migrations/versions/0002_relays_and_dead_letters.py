"""Relay heartbeats, the dead-letter outbox, and the stale dead-letter copies to remove.

A dead job's copy in `<queue>.XQ` is now published by the relay (`published_at IS NULL`
on a dead job means its copy is still to go out), since workers acknowledge a message when
they claim its job. A replay or discard records the dead run whose copy became stale; the
relay removes those copies in one pass over the queue.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TABLE relays (
	id TEXT NOT NULL,
	host TEXT NOT NULL,
	pid INTEGER NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	last_seen TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	published BIGINT DEFAULT '0' NOT NULL,
	stopped_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id)
)
"""
    )
    op.execute(
        """
CREATE TABLE stale_dead_letters (
	id BIGSERIAL NOT NULL,
	queue TEXT NOT NULL,
	job_id UUID NOT NULL,
	run INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	PRIMARY KEY (id)
)
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_dead_letters ON jobs (finished_at) WHERE published_at IS NULL AND state = 'dead'
"""
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_dead_letters")
    op.execute("DROP TABLE IF EXISTS stale_dead_letters")
    op.execute("DROP TABLE IF EXISTS relays")
