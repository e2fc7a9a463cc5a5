"""Workflows in the ledger: steps that wait for other steps, as functions over `queries.sql`.

A step is a job with `workflow_id` and `step`. One with upstream steps is inserted `waiting`
with their count (`upstream_left`); each upstream success counts it down in the statement that
records the success (`succeed`), and the success that brings it to zero makes it `queued`. A
step that ends dead or cancelled cancels the steps after it (`cancel_downstream`) in the
transaction that ended it; replaying it brings them back (`revive_downstream`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async
from app.ledger.jobs import NewJob


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step about to be inserted: its job, its name, the steps it comes after (names) and the
    ids of the steps that come after it."""

    job: NewJob
    step: str
    after: tuple[str, ...]
    downstream: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    id: UUID
    name: str
    client_id: str | None
    steps: Sequence[NewStep]
    # Held by the first step (the anchor) with the request's fingerprint, as a keyed job holds its own.
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class KeyedWorkflow:
    """The workflow an idempotency key made: its id, name, state now and each step's job id."""

    id: UUID
    name: str
    state: str
    steps: dict[str, UUID]


def _insert_params(workflow: NewWorkflow) -> dict[str, Any]:
    rows = [
        {
            "id": s.job.id,
            "task": s.job.task,
            "queue": s.job.queue,
            "payload": orjson.Fragment(s.job.payload_json),
            "priority": s.job.priority,
            "max_attempts": s.job.max_attempts,
            "client_id": s.job.client_id,
            "parent_id": s.job.parent_id,
            **({} if s.job.flow is None else s.job.flow.columns()),
            "step": s.step,
            "after_steps": list(s.after),
            "downstream": list(s.downstream) or None,
            "upstream_left": len(s.after),
            "is_anchor": index == 0,
        }
        for index, s in enumerate(workflow.steps)
    ]
    return {
        "id": workflow.id,
        "name": workflow.name,
        "client_id": workflow.client_id,
        "steps": len(workflow.steps),
        "rows": orjson.dumps(rows).decode(),
        "idempotency_key": workflow.idempotency_key,
        "request_hash": workflow.request_hash,
    }


def insert(conn: SyncConnection, workflow: NewWorkflow) -> int:
    """Insert a workflow and its steps in the caller's transaction; the relay is woken at commit.
    How many steps were inserted: 0 when its idempotency key is taken (nothing is inserted)."""
    return int(run(conn, queries.INSERT_WORKFLOW, _insert_params(workflow)).rows[0][0])


async def insert_async(conn: AsyncConnection, workflow: NewWorkflow) -> int:
    return int((await run_async(conn, queries.INSERT_WORKFLOW, _insert_params(workflow))).rows[0][0])


def _keyed(rows: Sequence[Any]) -> KeyedWorkflow | None:
    if not rows:
        return None
    return KeyedWorkflow(rows[0][0], rows[0][1], rows[0][2], {row[3]: row[4] for row in rows})


def workflow_of_key(conn: SyncConnection, anchor_id: UUID) -> KeyedWorkflow | None:
    """The workflow whose anchor step is this job (the holder of an idempotency key), if any."""
    return _keyed(run(conn, queries.WORKFLOW_OF_KEY, {"id": anchor_id}).rows)


async def workflow_of_key_async(conn: AsyncConnection, anchor_id: UUID) -> KeyedWorkflow | None:
    return _keyed((await run_async(conn, queries.WORKFLOW_OF_KEY, {"id": anchor_id})).rows)


async def cancel_steps(conn: AsyncConnection, workflow_id: UUID) -> int:
    """The workflow's steps that have not started → cancelled; how many."""
    return len((await run_async(conn, queries.CANCEL_WORKFLOW, {"id": workflow_id})).rows)


async def request_cancel_steps(conn: AsyncConnection, workflow_id: UUID) -> int:
    """Ask the workflow's running steps to stop (their workers are woken at commit); how many."""
    return len((await run_async(conn, queries.REQUEST_CANCEL_WORKFLOW, {"id": workflow_id})).rows)


def cancel_downstream(conn: SyncConnection, job_ids: Sequence[UUID]) -> int:
    """Of these jobs, those that ended dead or cancelled: cancel the steps after them,
    transitively (in the caller's transaction, the one that ended them); how many."""
    if not job_ids:
        return 0
    return len(run(conn, queries.CANCEL_DOWNSTREAM, {"ids": list(job_ids)}).rows)


async def cancel_downstream_async(conn: AsyncConnection, job_ids: Sequence[UUID]) -> int:
    if not job_ids:
        return 0
    return len((await run_async(conn, queries.CANCEL_DOWNSTREAM, {"ids": list(job_ids)})).rows)


async def revive_downstream_async(conn: AsyncConnection, replayed: Sequence[UUID]) -> int:
    """After a replay of these jobs (in the caller's transaction): the steps cancelled for them
    wait again, unless another failed step of their workflow still blocks them; how many wait."""
    if not replayed:
        return 0
    rows = (await run_async(conn, queries.REVIVE_DOWNSTREAM, {"ids": list(replayed)})).rows
    workflows = list({row[0] for row in rows})
    if not workflows:
        return 0
    failed = await run_async(conn, queries.FAILED_STEPS, {"workflows": workflows})
    blocked = await cancel_downstream_async(conn, [row[0] for row in failed.rows])
    return len(rows) - blocked


def settle_waiting(conn: SyncConnection, age_seconds: float, limit: int = 1000) -> int:
    """Queue the steps waiting for longer than `age_seconds` whose upstream steps all succeeded."""
    return len(run(conn, queries.SETTLE_WAITING_STEPS, {"age": age_seconds, "limit": limit}).rows)


def upstream_results(conn: SyncConnection, job_id: UUID) -> dict[str, tuple[str, Any]]:
    """For each step this step comes after: (its state, what it returned)."""
    rows = run(conn, queries.UPSTREAM_RESULTS, {"id": job_id}).rows
    return {row[0]: (row[2], None if row[1] is None else orjson.loads(row[1])) for row in rows}


def prune(
    conn: SyncConnection, retain: dict[str, float], limit: int, *, record_stale: bool = False
) -> tuple[int, int]:
    """Delete up to `limit` finished workflows past their retention (by their stored state and
    finish time: a failed one is kept the longest of the three), with their steps; (workflows,
    steps) deleted."""
    params = {
        "retain_succeeded": retain["succeeded"],
        "retain_dead": retain["dead"],
        "retain_cancelled": retain["cancelled"],
        "limit": limit,
        "record_stale": record_stale,
    }
    row = run(conn, queries.PRUNE_WORKFLOWS, params).rows[0]
    return int(row[0]), int(row[1])
