"""Flow control: concurrency and rate limits per key, paused queues.

- `jobs.concurrency_key`, `concurrency_limit`: at most `concurrency_limit` jobs of a task with one
  key run at once. The key is the value of the payload field the task names, computed when the
  job is made ('' when the limit is for the whole task), so neither the relay nor the claim
  reads JSON. The limit is kept on the row: jobs made before a deploy keep the limit they were
  made with.
- `jobs.rate_key`, `rate_limit`, `rate_period`: at most `rate_limit` starts per `rate_period`
  seconds per (task, rate key).
- `ix_jobs_outbox` now covers unlimited jobs only, so the relay's take of those reads what it
  read before; limited jobs have indexes of their own: by due time (`ix_jobs_outbox_limited`),
  per key in the order they are published (`ix_jobs_waiting_concurrency`, `ix_jobs_waiting_rate`:
  the relay walks the keys and reads only what each may start), and the jobs that hold a slot
  of their key (running, or published and not claimed yet: `ix_jobs_flow_busy`,
  `ix_jobs_rate_outstanding`), which the relay and the claim count.
- `flow_rate_windows`: one row per (task, rate key), the fixed window of starts it is in.
- `paused_queues`: a queue named here starts nothing new.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None

UNPUBLISHED = "published_at IS NULL AND state IN ('queued', 'retrying')"
LIMITED = "(concurrency_key IS NOT NULL OR rate_key IS NOT NULL)"
UNLIMITED = "concurrency_key IS NULL AND rate_key IS NULL"


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN concurrency_key TEXT")
    op.execute("ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER")
    op.execute("ALTER TABLE jobs ADD COLUMN rate_key TEXT")
    op.execute("ALTER TABLE jobs ADD COLUMN rate_limit INTEGER")
    op.execute("ALTER TABLE jobs ADD COLUMN rate_period DOUBLE PRECISION")
    op.execute(
        "ALTER TABLE jobs ADD CONSTRAINT ck_jobs_concurrency "
        "CHECK ((concurrency_key IS NULL) = (concurrency_limit IS NULL) AND concurrency_limit >= 1)"
    )
    op.execute(
        "ALTER TABLE jobs ADD CONSTRAINT ck_jobs_rate CHECK ((rate_key IS NULL) = (rate_limit IS NULL) "
        "AND (rate_key IS NULL) = (rate_period IS NULL) AND rate_limit >= 1 AND rate_period > 0)"
    )
    op.execute("DROP INDEX ix_jobs_outbox")
    op.execute(f"CREATE INDEX ix_jobs_outbox ON jobs (available_at) WHERE {UNPUBLISHED} AND {UNLIMITED}")
    op.execute(
        f"CREATE INDEX ix_jobs_outbox_limited ON jobs (available_at) WHERE {UNPUBLISHED} AND {LIMITED}"
    )
    op.execute(
        "CREATE INDEX ix_jobs_waiting_concurrency"
        " ON jobs (task, concurrency_key, priority DESC, available_at) "
        f"WHERE {UNPUBLISHED} AND concurrency_key IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_jobs_waiting_rate ON jobs (task, rate_key, priority DESC, available_at) "
        f"WHERE {UNPUBLISHED} AND concurrency_key IS NULL AND rate_key IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_jobs_flow_busy ON jobs (task, concurrency_key) WHERE concurrency_key IS NOT NULL "
        "AND (state = 'running' OR (published_at IS NOT NULL AND state IN ('queued', 'retrying')))"
    )
    op.execute(
        "CREATE INDEX ix_jobs_rate_outstanding ON jobs (task, rate_key) WHERE rate_key IS NOT NULL "
        "AND published_at IS NOT NULL AND state IN ('queued', 'retrying')"
    )
    op.execute(
        """
CREATE TABLE flow_rate_windows (
	task TEXT NOT NULL,
	rate_key TEXT NOT NULL,
	window_start TIMESTAMP WITH TIME ZONE NOT NULL,
	allowed INTEGER NOT NULL,
	used INTEGER NOT NULL,
	granted INTEGER NOT NULL,
	PRIMARY KEY (task, rate_key)
)
"""
    )
    op.execute(
        """
CREATE TABLE paused_queues (
	queue TEXT NOT NULL,
	paused_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	PRIMARY KEY (queue)
)
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE paused_queues")
    op.execute("DROP TABLE flow_rate_windows")
    op.execute("DROP INDEX ix_jobs_rate_outstanding")
    op.execute("DROP INDEX ix_jobs_flow_busy")
    op.execute("DROP INDEX ix_jobs_waiting_rate")
    op.execute("DROP INDEX ix_jobs_waiting_concurrency")
    op.execute("DROP INDEX ix_jobs_outbox_limited")
    op.execute("DROP INDEX ix_jobs_outbox")
    op.execute(
        "CREATE INDEX ix_jobs_outbox ON jobs (available_at) "
        "WHERE published_at IS NULL AND state IN ('queued', 'retrying')"
    )
    op.execute("ALTER TABLE jobs DROP CONSTRAINT ck_jobs_rate")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT ck_jobs_concurrency")
    for column in ("rate_period", "rate_limit", "rate_key", "concurrency_limit", "concurrency_key"):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
