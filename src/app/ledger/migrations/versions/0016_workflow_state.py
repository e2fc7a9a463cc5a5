"""A workflow's state, stored: `GET /api/v1/workflows?state=` reads an index, not every step.

- `workflows.state` (`running`, `succeeded`, `failed`), `workflows.finished_at`, and two counts
  it is made of: `unfinished` (steps not yet succeeded, dead or cancelled) and `failed` (steps
  dead or cancelled, and steps discarded: a workflow missing a step never succeeds).
- They are kept by a trigger on `jobs`, in the statement that changes a step's state, whichever
  statement that is (a success, a death, a cancel, a replay, a revival, a lease reaped, ...): the
  counts move by the step's change, `unfinished = unfinished - 1` re-read on the newest row, so
  two steps of one workflow finishing in two transactions at once both count (no write skew),
  and the state follows the counts. The trigger's WHEN tests the row before anything is called:
  a job that is no workflow step (`workflow_id` NULL) costs one NULL test per updated row.
- `insert_workflow` starts a workflow `running` with every step unfinished; the existing rows
  are counted from their steps here.
- `ix_workflows_state_created` serves the list by state, newest first.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision: str | None = "0015"
branch_labels = None
depends_on = None

# Open: a step that may still run. Failed: dead or cancelled. A step deleted alone (a discarded
# dead step) stays counted as failed; a deleted open or succeeded step becomes a failed one.
FUNCTION = """
CREATE FUNCTION conveyor_workflow_step_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d_open integer;
    d_failed integer;
    wid uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        wid := OLD.workflow_id;
        d_open := -(OLD.state NOT IN ('succeeded', 'dead', 'cancelled'))::integer;
        d_failed := (OLD.state NOT IN ('dead', 'cancelled'))::integer;
    ELSE
        wid := NEW.workflow_id;
        d_open := (NEW.state NOT IN ('succeeded', 'dead', 'cancelled'))::integer
                - (OLD.state NOT IN ('succeeded', 'dead', 'cancelled'))::integer;
        d_failed := (NEW.state IN ('dead', 'cancelled'))::integer
                  - (OLD.state IN ('dead', 'cancelled'))::integer;
    END IF;
    IF d_open <> 0 OR d_failed <> 0 THEN
        UPDATE workflows SET
            unfinished = unfinished + d_open,
            failed = failed + d_failed,
            state = CASE WHEN unfinished + d_open > 0 THEN 'running'
                         WHEN failed + d_failed > 0 THEN 'failed' ELSE 'succeeded' END,
            finished_at = CASE WHEN unfinished + d_open > 0 THEN NULL
                               WHEN unfinished > 0 THEN now() ELSE finished_at END
        WHERE id = wid;
    END IF;
    RETURN NULL;
END
$$
"""

BACKFILL = """
UPDATE workflows w SET
    unfinished = s.open,
    failed = s.failed + (w.steps - s.n),
    state = CASE WHEN s.open > 0 THEN 'running'
                 WHEN s.failed + (w.steps - s.n) > 0 THEN 'failed' ELSE 'succeeded' END,
    finished_at = CASE WHEN s.open = 0 THEN s.last END
FROM (
    SELECT w2.id,
           count(j.id) FILTER (WHERE j.state NOT IN ('succeeded', 'dead', 'cancelled')) AS open,
           count(j.id) FILTER (WHERE j.state IN ('dead', 'cancelled')) AS failed,
           count(j.id) AS n, max(j.finished_at) AS last
    FROM workflows w2 LEFT JOIN jobs j ON j.workflow_id = w2.id
    GROUP BY w2.id
) AS s
WHERE w.id = s.id
"""


def upgrade() -> None:
    op.execute(
        "ALTER TABLE workflows"
        " ADD COLUMN state TEXT NOT NULL DEFAULT 'running'"
        " CONSTRAINT ck_workflows_state CHECK (state IN ('running', 'succeeded', 'failed')),"
        " ADD COLUMN unfinished INTEGER NOT NULL DEFAULT 0,"
        " ADD COLUMN failed INTEGER NOT NULL DEFAULT 0,"
        " ADD COLUMN finished_at TIMESTAMPTZ"
    )
    op.execute(BACKFILL)
    op.execute("CREATE INDEX ix_workflows_state_created ON workflows (state, created_at, id)")
    op.execute(FUNCTION)
    op.execute(
        "CREATE TRIGGER jobs_workflow_step_moved AFTER UPDATE OF state ON jobs FOR EACH ROW"
        " WHEN (NEW.workflow_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)"
        " EXECUTE FUNCTION conveyor_workflow_step_moved()"
    )
    op.execute(
        "CREATE TRIGGER jobs_workflow_step_deleted AFTER DELETE ON jobs FOR EACH ROW"
        " WHEN (OLD.workflow_id IS NOT NULL AND OLD.state <> 'dead')"
        " EXECUTE FUNCTION conveyor_workflow_step_moved()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_workflow_step_deleted ON jobs")
    op.execute("DROP TRIGGER jobs_workflow_step_moved ON jobs")
    op.execute("DROP FUNCTION conveyor_workflow_step_moved()")
    op.execute("DROP INDEX ix_workflows_state_created")
    op.execute(
        "ALTER TABLE workflows DROP COLUMN finished_at, DROP COLUMN failed, DROP COLUMN unfinished,"
        " DROP COLUMN state"
    )
