"""Reading workflows: one with its steps, pages of them; written once for the API, the dashboard
and the CLI. A workflow's state is stored, kept by the ledger in the statement that changes a
step's state: `running` until every step is terminal, then `succeeded` when all succeeded, else
`failed` (also when a dead step was discarded: a workflow missing a step never succeeds)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import WorkflowNotFound
from app.operate.reads import decode_cursor, encode_cursor


class WorkflowState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StepView(BaseModel):
    job_id: UUID
    task: str
    state: str
    after: list[str]
    depth: int  # 0 for a step that comes after none; else one more than its deepest upstream
    last_error: str | None = None


class WorkflowView(BaseModel):
    id: UUID
    name: str
    state: WorkflowState
    created_at: datetime
    finished_at: datetime | None  # when its last step finished, once every step has
    client_id: str | None = None
    # How many steps are in each state, e.g. {"succeeded": 3, "waiting": 1}.
    counts: dict[str, int]
    steps: dict[str, StepView] | None = None  # by depth, then name; left out of lists
    status_url: str


class WorkflowList(BaseModel):
    items: list[WorkflowView]
    next_cursor: str | None


# Each workflow with its stored state (kept by the ledger as its steps change: 0016) and its
# steps' counts, read from its steps (ux_jobs_workflow_step) for the workflows shown only.
_SUMMARY = """
SELECT w.id, w.name, w.client_id, w.created_at, w.state, w.finished_at, s.counts
FROM workflows w CROSS JOIN LATERAL (
    SELECT jsonb_object_agg(c.state, c.n) AS counts
    FROM (SELECT j.state, count(*) AS n FROM jobs j WHERE j.workflow_id = w.id GROUP BY j.state) AS c
) AS s
"""

_STEPS = text("SELECT step, id, task, state, after_steps, last_error FROM jobs WHERE workflow_id = :id")


def _view(row: Any, steps: dict[str, StepView] | None = None) -> WorkflowView:
    return WorkflowView(
        id=row.id,
        name=row.name,
        state=WorkflowState(row.state or "running"),
        created_at=row.created_at,
        finished_at=row.finished_at,
        client_id=row.client_id,
        counts=dict(row.counts or {}),
        steps=steps,
        status_url=f"/api/v1/workflows/{row.id}",
    )


def depths(after: dict[str, list[str]]) -> dict[str, int]:
    """Each step's layer: 0 without upstream steps, else one more than its deepest upstream step."""
    found: dict[str, int] = {}

    def depth(step: str) -> int:
        if step not in found:
            found[step] = 0  # a guard: the graph is acyclic, checked when it was made
            found[step] = 1 + max((depth(up) for up in after.get(step, []) if up in after), default=-1)
        return found[step]

    for step in after:
        depth(step)
    return found


async def get(conn: AsyncConnection, workflow_id: UUID, client_id: str | None = None) -> WorkflowView:
    """One workflow with its steps; WorkflowNotFound when it is not there (or not the client's)."""
    query = _SUMMARY + " WHERE w.id = :id AND (CAST(:client AS text) IS NULL OR w.client_id = :client)"
    row = (await conn.execute(text(query), {"id": workflow_id, "client": client_id})).first()
    if row is None:
        raise WorkflowNotFound(workflow_id)
    rows = (await conn.execute(_STEPS, {"id": workflow_id})).all()
    layer = depths({r.step: list(r.after_steps or []) for r in rows})
    ordered = sorted(rows, key=lambda r: (layer[r.step], r.step))
    steps = {
        r.step: StepView(
            job_id=r.id,
            task=r.task,
            state=r.state,
            after=list(r.after_steps or []),
            depth=layer[r.step],
            last_error=r.last_error,
        )
        for r in ordered
    }
    return _view(row, steps)


async def page(
    conn: AsyncConnection,
    *,
    state: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    client_id: str | None = None,
) -> WorkflowList:
    """Workflows newest first, with keyset paging as jobs have (`decode_cursor` refuses a
    cursor this API did not hand out, with ValueError)."""
    conditions = ["(CAST(:client AS text) IS NULL OR w.client_id = :client)"]
    params: dict[str, Any] = {"client": client_id, "limit": limit + 1}
    if state is not None:
        conditions.append("w.state = :state")
        params["state"] = state
    if cursor is not None:
        params["created_at"], params["after_id"] = decode_cursor(cursor)
        conditions.append("(w.created_at, w.id) < (:created_at, :after_id)")
    query = f"{_SUMMARY} WHERE {' AND '.join(conditions)} ORDER BY w.created_at DESC, w.id DESC LIMIT :limit"
    rows = (await conn.execute(text(query), params)).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return WorkflowList(items=[_view(row) for row in rows], next_cursor=next_cursor)
