"""The ledger's tables, as SQLAlchemy Core metadata (the migrations are the source of truth)."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = MetaData()


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"
    WAITING = "waiting"  # a workflow step whose upstream steps have not all succeeded


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
NOTIFY_CHANNEL = "conveyor_jobs"
# NOTIFY payloads that only free a slot of a limit: the relay's take of jobs with limits has
# something to do. A success names the keys it freed, in one payload:
# "slot:<task>\x1f<key>\x1e<task>\x1f<key>…" (queries.sql, succeed).
SLOT_FREED, SLOT_FREED_OF = "slot", "slot:"
TASK_APART, KEYS_APART = chr(31), chr(30)

# Steps that wait for other steps (0014); its state is kept by a trigger on jobs (0016).
workflows = Table(
    "workflows",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False),
    Column("client_id", Text),  # the API key that made it; NULL from the CLI or Python
    Column("steps", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("state", Text, nullable=False, server_default="running"),
    Column("unfinished", Integer, nullable=False, server_default="0"),  # steps not terminal
    Column("failed", Integer, nullable=False, server_default="0"),  # dead, cancelled, discarded
    Column("finished_at", DateTime(timezone=True)),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("task", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("state", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default="0"),
    # run counts replays; attempts counts tries within the current run. Together they
    # are the fencing token every worker write is checked against.
    Column("run", Integer, nullable=False, server_default="1"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("progress", SmallInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("available_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # When the relay put the job's message on its queue; for a dead job, when its copy went to
    # <queue>.XQ (NULL: still to go).
    Column("published_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("worker_id", Text),
    Column("last_error", Text),
    Column("result", JSONB),
    Column("idempotency_key", Text),
    Column("request_hash", Text),
    # The API key (its id) that made the job; NULL for jobs from the CLI or from Python.
    Column("client_id", Text),
    Column("parent_id", UUID(as_uuid=True)),  # the job whose run made this one (a child job)
    # The schedule that made the job and the tick it was made for (NULL: not scheduled).
    Column("schedule", Text),
    Column("scheduled_for", DateTime(timezone=True)),
    Column("unique_key", Text),  # at most one job per (task, unique_key) in flight
    # When an operator asked the running job to stop; its worker ends it `cancelled`.
    Column("cancel_requested_at", DateTime(timezone=True)),
    # The W3C traceparent (and, after a newline, tracestate) that the job's runs continue: the
    # span that enqueued it. NULL when tracing was off where it was made.
    Column("trace_context", Text),
    # Flow control (declared on the task, copied here when the job is made): at most
    # `concurrency_limit` running per (task, concurrency_key), at most `rate_limit` starts per
    # `rate_period` seconds per (task, rate_key). '' is the key of a limit for the whole task.
    Column("concurrency_key", Text),
    Column("concurrency_limit", Integer),
    Column("rate_key", Text),
    Column("rate_limit", Integer),
    Column("rate_period", Float),
    # Workflows (0014): its workflow and step, its upstream (names), downstream (ids), how many
    Column("workflow_id", UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE")),
    Column("step", Text),
    Column("after_steps", ARRAY(Text)),
    Column("downstream", ARRAY(UUID(as_uuid=True))),
    Column("upstream_left", Integer),  # of its upstream steps have not succeeded yet
    CheckConstraint(
        "(concurrency_key IS NULL) = (concurrency_limit IS NULL) AND concurrency_limit >= 1",
        name="ck_jobs_concurrency",
    ),
    CheckConstraint(
        "(rate_key IS NULL) = (rate_limit IS NULL) AND (rate_key IS NULL) = (rate_period IS NULL)"
        " AND rate_limit >= 1 AND rate_period > 0",
        name="ck_jobs_rate",
    ),
    Index("ix_jobs_created", "created_at", "id"),
    Index("ix_jobs_state_created", "state", "created_at", "id"),
    Index("ix_jobs_task_created", "task", "created_at", "id"),
    Index(
        "ix_jobs_outbox",
        "available_at",
        postgresql_where=text(
            "published_at IS NULL AND state IN ('queued', 'retrying')"
            " AND concurrency_key IS NULL AND rate_key IS NULL"
        ),
    ),
    # The relay's take of limited jobs (ranked per key), and when the next one is due.
    Index(
        "ix_jobs_outbox_limited",
        "available_at",
        postgresql_where=text(
            "published_at IS NULL AND state IN ('queued', 'retrying')"
            " AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL)"
        ),
    ),
    # The relay's walk over the keys, and each key's jobs in the order they are published.
    Index(
        "ix_jobs_waiting_concurrency",
        "task",
        "concurrency_key",
        text("priority DESC"),
        "available_at",
        postgresql_where=text(
            "published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NOT NULL"
        ),
    ),
    Index(
        "ix_jobs_waiting_rate",
        "task",
        "rate_key",
        text("priority DESC"),
        "available_at",
        postgresql_where=text(
            "published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NULL"
            " AND rate_key IS NOT NULL"
        ),
    ),
    # The jobs holding a slot of their key: running, or published and not claimed yet.
    Index(
        "ix_jobs_flow_busy",
        "task",
        "concurrency_key",
        postgresql_where=text(
            "concurrency_key IS NOT NULL AND (state = 'running'"
            " OR (published_at IS NOT NULL AND state IN ('queued', 'retrying')))"
        ),
    ),
    # Rate-limited jobs published and not claimed yet: the relay sends at most a window's worth.
    Index(
        "ix_jobs_rate_outstanding",
        "task",
        "rate_key",
        postgresql_where=text(
            "rate_key IS NOT NULL AND published_at IS NOT NULL AND state IN ('queued', 'retrying')"
        ),
    ),
    Index("ix_jobs_leases", "lease_expires_at", postgresql_where=text("state = 'running'")),
    Index("ix_jobs_finished", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
    Index(
        "ix_jobs_dead_letters",
        "finished_at",
        postgresql_where=text("published_at IS NULL AND state = 'dead'"),
    ),
    Index(
        "ux_jobs_idempotency_key",
        text("coalesce(client_id, '')"),
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index(
        "ix_jobs_client_created",
        "client_id",
        "created_at",
        "id",
        postgresql_where=text("client_id IS NOT NULL"),
    ),
    # One job per (schedule, tick): any number of relays may fire a tick, one insert wins.
    Index(
        "ux_jobs_schedule_tick",
        "schedule",
        "scheduled_for",
        unique=True,
        postgresql_where=text("schedule IS NOT NULL"),
    ),
    Index(
        "ix_jobs_schedule_created",
        "schedule",
        "created_at",
        "id",
        postgresql_where=text("schedule IS NOT NULL"),
    ),
    Index(
        "ux_jobs_unique_in_flight",
        "task",
        "unique_key",
        unique=True,
        postgresql_where=text("unique_key IS NOT NULL AND state IN ('queued', 'retrying', 'running')"),
    ),
    # Pruning: one state's finished jobs, oldest first.
    Index("ix_jobs_prune", "state", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
    # Releasing idempotency keys whose window has passed, oldest first.
    Index("ix_jobs_idempotency_created", "created_at", postgresql_where=text("idempotency_key IS NOT NULL")),
)

# A task fired on a timing. `next_run_at` is always a tick of its timing; `last_run_at` the
# tick it fired last. `source`: made through the API/CLI, or declared by a task in code.
schedules = Table(
    "schedules",
    metadata,
    Column("name", Text, primary_key=True),
    Column("task", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("cron", Text),
    Column("every_seconds", Integer),
    Column("timezone", Text, nullable=False, server_default="UTC"),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("source", Text, nullable=False, server_default="api"),
    Column("next_run_at", DateTime(timezone=True), nullable=False),
    Column("last_run_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("(cron IS NULL) <> (every_seconds IS NULL)", name="ck_schedules_one_timing"),
    CheckConstraint("every_seconds IS NULL OR every_seconds >= 1", name="ck_schedules_every"),
    CheckConstraint("source IN ('api', 'code')", name="ck_schedules_source"),
    Index("ix_schedules_due", "next_run_at", postgresql_where=text("NOT paused")),
)

# The fixed window of starts each (task, rate key) is in: `used` of `allowed` starts taken since
# `window_start`; `granted`, what the last claim took (read back by that claim).
flow_rate_windows = Table(
    "flow_rate_windows",
    metadata,
    Column("task", Text, primary_key=True),
    Column("rate_key", Text, primary_key=True),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("allowed", Integer, nullable=False),
    Column("used", Integer, nullable=False),
    Column("granted", Integer, nullable=False),
)

# A queue named here starts nothing new until it is resumed (accepting into it goes on).
paused_queues = Table(
    "paused_queues",
    metadata,
    Column("queue", Text, primary_key=True),
    Column("paused_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("run", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", Text),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", Text),
    Column("error", Text),
    Column("duration_seconds", Float),
    Index("ix_job_attempts_job", "job_id", "run", "attempt"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("in_flight", Integer, nullable=False, server_default="0"),
    Column("processed", BigInteger, nullable=False, server_default="0"),
    Column("stopped_at", DateTime(timezone=True)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("secret_hash", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    # 'v2': HMAC with the current pepper; 'legacy': made before 0006, re-hashed at first use.
    Column("hash_scheme", Text, nullable=False, server_default="v2"),
)

# Secrets Conveyor generates for itself when the environment gives none.
conveyor_secrets = Table(
    "conveyor_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# A dashboard sign-in: the SHA-256 of the cookie's random value, never the value itself.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("id_hash", Text, primary_key=True),
    Column("key_id", Text, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("client_address", Text),
    Index("ix_dashboard_sessions_key", "key_id"),
    Index("ix_dashboard_sessions_expires", "expires_at"),
)

# Who did what: every operator action, every sign-in and sign-out.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("key_id", Text),
    Column("key_name", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("count", Integer),
    Column("request_id", Text),
    Column("client_address", Text),
    Column("detail", JSONB),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_action", "action", "id"),
    Index("ix_audit_log_key", "key_name", "id"),
)

relays = Table(
    "relays",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("published", BigInteger, nullable=False, server_default="0"),
    Column("stopped_at", DateTime(timezone=True)),
)

# A dead run whose copy in <queue>.XQ went stale (the job was replayed or discarded).
stale_dead_letters = Table(
    "stale_dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("queue", Text, nullable=False),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("run", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

job_artifacts = Table(
    "job_artifacts",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    # The whole file, for artifacts stored before 0006; NULL: its pieces are in job_artifact_chunks.
    Column("content", LargeBinary),
    Column("size", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
