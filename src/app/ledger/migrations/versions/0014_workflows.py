"""Workflows: steps that wait for other steps, in the ledger.

- `workflows`: one row per workflow (its name, the key that made it, how many steps). Its state
  is not stored: it is read from its steps (running until every step is terminal).
- `jobs.workflow_id`, `jobs.step`: the workflow a job is a step of, and the step's name (unique
  within its workflow). Deleting a workflow deletes its steps (retention prunes them together).
- `jobs.after_steps`: the names of the steps this one comes after (for views, upstream results and
  a revival's count); `jobs.downstream`: the ids of the steps that come after this one, so a
  success, a death or a replay finds them by primary key; `jobs.upstream_left`: how many of
  `after_steps` have not succeeded yet while the step is `waiting`.
- The new state `waiting` needs no index of the relay's or the claim's: every one of them names
  the states it takes (`queued`, `retrying`), so a waiting step is never published or claimed.
  `ix_jobs_waiting_steps` serves the relay's safety sweep over waiting steps.

Revision ID: 0014
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE workflows ("
        " id UUID PRIMARY KEY,"
        " name TEXT NOT NULL,"
        " client_id TEXT,"
        " steps INTEGER NOT NULL,"
        " created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now())"
    )
    op.execute("CREATE INDEX ix_workflows_created ON workflows (created_at, id)")
    op.execute(
        "CREATE INDEX ix_workflows_client_created ON workflows (client_id, created_at, id)"
        " WHERE client_id IS NOT NULL"
    )
    # Nullable columns without defaults: adding them rewrites no row.
    op.execute(
        "ALTER TABLE jobs ADD COLUMN workflow_id UUID REFERENCES workflows (id) ON DELETE CASCADE,"
        " ADD COLUMN step TEXT, ADD COLUMN after_steps TEXT[], ADD COLUMN downstream UUID[],"
        " ADD COLUMN upstream_left INTEGER"
    )
    op.execute(
        "CREATE UNIQUE INDEX ux_jobs_workflow_step ON jobs (workflow_id, step) WHERE workflow_id IS NOT NULL"
    )
    op.execute("CREATE INDEX ix_jobs_waiting_steps ON jobs (updated_at) WHERE state = 'waiting'")


def downgrade() -> None:
    op.execute("DROP INDEX ix_jobs_waiting_steps")
    op.execute("DROP INDEX ux_jobs_workflow_step")
    op.execute(
        "ALTER TABLE jobs DROP COLUMN upstream_left, DROP COLUMN downstream, DROP COLUMN after_steps,"
        " DROP COLUMN step, DROP COLUMN workflow_id"
    )
    op.execute("DROP TABLE workflows")
