"""Access, hardened: secrets generated at first start, server-side dashboard sessions, exports
stored in chunks, a unique key per in-flight job, and the audit log.

- `conveyor_secrets`: secrets Conveyor makes for itself when the environment gives none (the
  pepper of API key hashes). Nothing that signs or hashes ships in the repository.
- `api_keys.hash_scheme`: `legacy` for keys hashed before this revision (with KEYS_SECRET or
  the old development default); each is re-hashed with the current pepper the first time it
  is used, so existing keys keep working.
- `dashboard_sessions`: a sign-in is a row (the SHA-256 of a random cookie value, the key,
  the expiry); signing out deletes it, revoking the key or its expiry ends it.
- `job_artifact_chunks`: a job's file, in pieces written and read one at a time, so neither
  the export nor the download holds the whole file; `job_artifacts.content` stays for files
  stored whole before this revision.
- `jobs.unique_key` and `ux_jobs_unique_in_flight`: at most one job per (task, unique key)
  while it is queued, retrying or running (one running export per client, unique jobs).
- `audit_log`: every operator action and every sign-in and sign-out.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE TABLE conveyor_secrets (
	name TEXT NOT NULL,
	value TEXT NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	PRIMARY KEY (name)
)
"""
    )
    op.execute("ALTER TABLE api_keys ADD COLUMN hash_scheme TEXT NOT NULL DEFAULT 'legacy'")
    op.execute("ALTER TABLE api_keys ALTER COLUMN hash_scheme SET DEFAULT 'v2'")
    op.execute(
        """
CREATE TABLE dashboard_sessions (
	id_hash TEXT NOT NULL,
	key_id TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
	client_address TEXT,
	PRIMARY KEY (id_hash)
)
"""
    )
    op.execute("CREATE INDEX ix_dashboard_sessions_key ON dashboard_sessions (key_id)")
    op.execute("CREATE INDEX ix_dashboard_sessions_expires ON dashboard_sessions (expires_at)")
    op.execute("ALTER TABLE job_artifacts ALTER COLUMN content DROP NOT NULL")
    op.execute("ALTER TABLE job_artifacts ADD COLUMN size BIGINT")
    op.execute(
        """
CREATE TABLE job_artifact_chunks (
	job_id UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	seq INTEGER NOT NULL,
	content BYTEA NOT NULL,
	PRIMARY KEY (job_id, seq)
)
"""
    )
    op.execute("ALTER TABLE jobs ADD COLUMN unique_key TEXT")
    op.execute(
        """
CREATE UNIQUE INDEX ux_jobs_unique_in_flight ON jobs (task, unique_key)
WHERE unique_key IS NOT NULL AND state IN ('queued', 'retrying', 'running')
"""
    )
    op.execute(
        """
CREATE TABLE audit_log (
	id BIGSERIAL NOT NULL,
	at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
	key_id TEXT,
	key_name TEXT NOT NULL,
	action TEXT NOT NULL,
	target TEXT,
	count INTEGER,
	request_id TEXT,
	client_address TEXT,
	detail JSONB,
	PRIMARY KEY (id)
)
"""
    )
    op.execute("CREATE INDEX ix_audit_log_at ON audit_log (at)")
    op.execute("CREATE INDEX ix_audit_log_action ON audit_log (action, id)")
    op.execute("CREATE INDEX ix_audit_log_key ON audit_log (key_name, id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit_log")
    op.execute("DROP INDEX IF EXISTS ux_jobs_unique_in_flight")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS unique_key")
    op.execute("DROP TABLE IF EXISTS job_artifact_chunks")
    op.execute("DELETE FROM job_artifacts WHERE content IS NULL")
    op.execute("ALTER TABLE job_artifacts DROP COLUMN IF EXISTS size")
    op.execute("ALTER TABLE job_artifacts ALTER COLUMN content SET NOT NULL")
    op.execute("DROP TABLE IF EXISTS dashboard_sessions")
    op.execute("ALTER TABLE api_keys DROP COLUMN IF EXISTS hash_scheme")
    op.execute("DROP TABLE IF EXISTS conveyor_secrets")
