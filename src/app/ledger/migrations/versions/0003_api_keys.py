"""API keys, the key that made each job, and idempotency keys that belong to a client.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TABLE api_keys (
	id TEXT NOT NULL,
	name TEXT NOT NULL,
	secret_hash TEXT NOT NULL,
	scopes TEXT[] NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	last_used_at TIMESTAMP WITH TIME ZONE,
	revoked_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id),
	UNIQUE (name)
)
"""
    )
    op.execute("ALTER TABLE jobs ADD COLUMN client_id TEXT")
    op.execute(
        "CREATE INDEX ix_jobs_client_created ON jobs (client_id, created_at, id) WHERE client_id IS NOT NULL"
    )
    # An Idempotency-Key belongs to the client that sent it (jobs made without a key, from the
    # CLI or Python, share the empty client).
    op.execute("DROP INDEX ux_jobs_idempotency_key")
    op.execute(
        """
CREATE UNIQUE INDEX ux_jobs_idempotency_key ON jobs (coalesce(client_id, ''), idempotency_key)
WHERE idempotency_key IS NOT NULL
"""
    )


def downgrade() -> None:
    op.execute("DROP INDEX ux_jobs_idempotency_key")
    op.execute(
        "CREATE UNIQUE INDEX ux_jobs_idempotency_key ON jobs (idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )
    op.execute("DROP INDEX IF EXISTS ix_jobs_client_created")
    op.execute("ALTER TABLE jobs DROP COLUMN client_id")
    op.execute("DROP TABLE IF EXISTS api_keys")
