"""The webhook tables (migration 0010), on the ledger's metadata: subscriptions and their deliveries.

The fan-out's mark (`webhook_fanout`, one row) is read and written by statement only.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from app.ledger.schema import metadata

# A subscription: the URL that gets each event of `events` (`job.<state>`), of one task or all.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("url", Text, nullable=False),
    Column("events", ARRAY(Text), nullable=False),
    Column("task", Text),
    Column("secret", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# One event owed to one subscription, from its fan-out until it is delivered or dead.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("webhook_id", UUID(as_uuid=True), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("event_at", DateTime(timezone=True), nullable=False),
    Column("data", JSONB, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("delivered_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("state IN ('pending', 'delivered', 'dead')", name="ck_webhook_deliveries_state"),
    Index("ux_webhook_deliveries_event", "webhook_id", "event_id", unique=True),
    Index("ix_webhook_deliveries_page", "webhook_id", "id"),
    Index("ix_webhook_deliveries_state", "webhook_id", "state", "id"),
    Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
    Index(
        "ix_webhook_deliveries_prune",
        "state",
        "finished_at",
        postgresql_where=text("finished_at IS NOT NULL"),
    ),
)
