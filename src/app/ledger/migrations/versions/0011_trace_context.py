"""Traces: the trace context a job's runs continue.

- `jobs.trace_context`: the W3C `traceparent` of the span that enqueued the job (the HTTP
  request's enqueue, the code that called `task.enqueue`, the running job that made a child,
  or a schedule's tick, which starts a trace of its own), followed by a newline and its
  `tracestate` when it has one. NULL when tracing is off (OTEL_EXPORTER_OTLP_ENDPOINT unset)
  where the job was made. A worker's run span is a child of it: the context lives in the
  ledger, not in the message, like everything else a run needs.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable with no default: adding it rewrites no row and holds the lock for an instant.
    op.execute("ALTER TABLE jobs ADD COLUMN trace_context TEXT")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN trace_context")
