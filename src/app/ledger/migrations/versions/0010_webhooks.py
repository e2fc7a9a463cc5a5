"""Webhooks: subscriptions, their deliveries, and where the fan-out stands in the event log.

- `webhooks`: a URL, the event types it wants (`job.<state>`), an optional task, and the secret
  its deliveries are signed with (kept as given: signing needs it; shown once, at creation).
- `webhook_deliveries`: one row per (subscription, event), made by the fan-out in the same
  transaction that moves its mark, so an event is never skipped and, by the unique index, never
  doubled. `data` is the job as it was when the event was fanned out, so every redelivery
  carries the same body. A sender takes due rows (`state = 'pending'`, `next_attempt_at` passed)
  with a lease: the take counts the attempt and moves `next_attempt_at` past the request's
  timeout, and the finish is fenced by `attempts`.
- `webhook_fanout`: one row, the (xid, id) of the last event fanned out.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhooks (
            id UUID PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT[] NOT NULL,
            task TEXT,
            secret TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            webhook_id UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            job_id UUID NOT NULL,
            event_at TIMESTAMP WITH TIME ZONE NOT NULL,
            data JSONB NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
            last_attempt_at TIMESTAMP WITH TIME ZONE,
            last_status INTEGER,
            last_error TEXT,
            delivered_at TIMESTAMP WITH TIME ZONE,
            finished_at TIMESTAMP WITH TIME ZONE,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
            CONSTRAINT ck_webhook_deliveries_state CHECK (state IN ('pending', 'delivered', 'dead'))
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX ux_webhook_deliveries_event ON webhook_deliveries (webhook_id, event_id)")
    op.execute("CREATE INDEX ix_webhook_deliveries_page ON webhook_deliveries (webhook_id, id)")
    op.execute("CREATE INDEX ix_webhook_deliveries_state ON webhook_deliveries (webhook_id, state, id)")
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_attempt_at) "
        "WHERE state = 'pending'"
    )
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_prune ON webhook_deliveries (state, finished_at) "
        "WHERE finished_at IS NOT NULL"
    )
    op.execute(
        """
        CREATE TABLE webhook_fanout (
            name TEXT PRIMARY KEY,
            xid XID8 NOT NULL,
            event_id BIGINT NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
        )
        """
    )
    # From the end of the log: no subscription exists yet, so nothing older is owed to anyone.
    op.execute(
        "INSERT INTO webhook_fanout (name, xid, event_id) "
        "SELECT 'events', xid, id FROM ("
        "SELECT xid, id FROM job_events ORDER BY xid DESC, id DESC LIMIT 1) AS n "
        "UNION ALL SELECT 'events', '0', 0 WHERE NOT EXISTS (SELECT FROM job_events)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE webhook_fanout")
    op.execute("DROP TABLE webhook_deliveries")
    op.execute("DROP TABLE webhooks")
