"""The ledger: jobs, their attempts, and worker heartbeats.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TABLE jobs (
	id UUID NOT NULL,
	task TEXT NOT NULL,
	queue TEXT NOT NULL,
	payload JSONB NOT NULL,
	state TEXT NOT NULL,
	priority SMALLINT DEFAULT '0' NOT NULL,
	run INTEGER DEFAULT '1' NOT NULL,
	attempts INTEGER DEFAULT '0' NOT NULL,
	max_attempts INTEGER NOT NULL,
	progress SMALLINT DEFAULT '0' NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	available_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	published_at TIMESTAMP WITH TIME ZONE,
	started_at TIMESTAMP WITH TIME ZONE,
	finished_at TIMESTAMP WITH TIME ZONE,
	lease_expires_at TIMESTAMP WITH TIME ZONE,
	worker_id TEXT,
	last_error TEXT,
	result JSONB,
	idempotency_key TEXT,
	request_hash TEXT,
	PRIMARY KEY (id)
)
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_task_created ON jobs (task, created_at, id)
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_leases ON jobs (lease_expires_at) WHERE state = 'running'
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_outbox ON jobs (available_at)
WHERE published_at IS NULL AND state IN ('queued', 'retrying')
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_created ON jobs (created_at, id)
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL
"""
    )
    op.execute(
        """
CREATE UNIQUE INDEX ux_jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL
"""
    )
    op.execute(
        """
CREATE INDEX ix_jobs_state_created ON jobs (state, created_at, id)
"""
    )
    op.execute(
        """
CREATE TABLE workers (
	id TEXT NOT NULL,
	host TEXT NOT NULL,
	pid INTEGER NOT NULL,
	queues JSONB DEFAULT '[]'::jsonb NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	last_seen TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	in_flight INTEGER DEFAULT '0' NOT NULL,
	processed BIGINT DEFAULT '0' NOT NULL,
	stopped_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id)
)
"""
    )
    op.execute(
        """
CREATE TABLE job_attempts (
	id BIGSERIAL NOT NULL,
	job_id UUID NOT NULL,
	run INTEGER NOT NULL,
	attempt INTEGER NOT NULL,
	worker_id TEXT,
	started_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	outcome TEXT,
	error TEXT,
	duration_seconds FLOAT,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
)
"""
    )
    op.execute(
        """
CREATE INDEX ix_job_attempts_job ON job_attempts (job_id, run, attempt)
"""
    )

    op.execute(
        """
CREATE TABLE job_artifacts (
	job_id UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	name TEXT NOT NULL,
	content_type TEXT NOT NULL,
	content BYTEA NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	PRIMARY KEY (job_id)
)
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS job_artifacts")
    op.execute("DROP TABLE IF EXISTS workers")
    op.execute("DROP TABLE IF EXISTS job_attempts")
    op.execute("DROP TABLE IF EXISTS jobs")
