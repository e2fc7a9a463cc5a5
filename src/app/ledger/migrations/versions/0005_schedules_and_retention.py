"""Schedules, the tick each scheduled job was made for, and the indexes retention needs.

A schedule's tick makes exactly one job: the job of (schedule, scheduled_for) is a unique
row, so any number of relays may fire a tick and only one insert wins. Pruning deletes
finished jobs by state and `finished_at`, and releases idempotency keys by `created_at`,
each through an index of its own, so neither scans the table.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TABLE schedules (
	name TEXT NOT NULL,
	task TEXT NOT NULL,
	queue TEXT NOT NULL,
	payload JSONB NOT NULL,
	max_attempts INTEGER NOT NULL,
	cron TEXT,
	every_seconds INTEGER,
	timezone TEXT DEFAULT 'UTC' NOT NULL,
	paused BOOLEAN DEFAULT false NOT NULL,
	source TEXT DEFAULT 'api' NOT NULL,
	next_run_at TIMESTAMP WITH TIME ZONE NOT NULL,
	last_run_at TIMESTAMP WITH TIME ZONE,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	PRIMARY KEY (name),
	CONSTRAINT ck_schedules_one_timing CHECK ((cron IS NULL) <> (every_seconds IS NULL)),
	CONSTRAINT ck_schedules_every CHECK (every_seconds IS NULL OR every_seconds >= 1),
	CONSTRAINT ck_schedules_source CHECK (source IN ('api', 'code'))
)
"""
    )
    op.execute("CREATE INDEX ix_schedules_due ON schedules (next_run_at) WHERE NOT paused")
    op.execute("ALTER TABLE jobs ADD COLUMN schedule TEXT, ADD COLUMN scheduled_for TIMESTAMP WITH TIME ZONE")
    op.execute(
        """
CREATE UNIQUE INDEX ux_jobs_schedule_tick ON jobs (schedule, scheduled_for) WHERE schedule IS NOT NULL
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_schedule_created ON jobs (schedule, created_at, id) WHERE schedule IS NOT NULL
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_prune ON jobs (state, finished_at) WHERE finished_at IS NOT NULL
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_idempotency_created ON jobs (created_at) WHERE idempotency_key IS NOT NULL
"""
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_idempotency_created")
    op.execute("DROP INDEX IF EXISTS ix_jobs_prune")
    op.execute("DROP INDEX IF EXISTS ix_jobs_schedule_created")
    op.execute("DROP INDEX IF EXISTS ux_jobs_schedule_tick")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS scheduled_for, DROP COLUMN IF EXISTS schedule")
    op.execute("DROP TABLE IF EXISTS schedules")
