"""How a job and its attempts are shown to clients: the JSON of the API and of `conveyor … --json`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from sqlalchemy import Row

from app.jobs.enqueue import shown_unique_key
from app.ledger.schema import JobState


class JobView(BaseModel):
    id: UUID
    task: str
    queue: str
    state: str
    priority: int
    run: int
    attempts: int
    max_attempts: int
    progress: int
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_retry_at: datetime | None
    last_error: str | None
    result: Any
    worker_id: str | None
    client_id: str | None = None  # the id of the API key that made the job
    parent_id: UUID | None = None  # the job whose run made this one
    schedule: str | None
    scheduled_for: datetime | None
    # When an operator asked the running job to stop (null: never in this run).
    cancel_requested_at: datetime | None = None
    # As given (a payload field's value, or the enqueue option), without the namespace it is
    # stored under; a one-per-client task's key shows as `client:<key id>`.
    unique_key: str | None = None
    workflow_id: UUID | None = None  # the workflow this job is a step of
    step: str | None = None  # its step's name in that workflow


class AttemptView(BaseModel):
    run: int
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    duration_seconds: float | None


def job_view(row: Row[Any]) -> JobView:
    return JobView(
        id=row.id,
        task=row.task,
        queue=row.queue,
        state=row.state,
        priority=row.priority,
        run=row.run,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        progress=row.progress,
        payload=row.payload,
        created_at=row.created_at,
        updated_at=row.updated_at,
        available_at=row.available_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        next_retry_at=row.available_at if row.state == JobState.RETRYING else None,
        last_error=row.last_error,
        result=row.result,
        worker_id=row.worker_id,
        client_id=row.client_id,
        parent_id=row.parent_id,
        schedule=row.schedule,
        scheduled_for=row.scheduled_for,
        cancel_requested_at=row.cancel_requested_at,
        unique_key=shown_unique_key(row.unique_key),
        workflow_id=row.workflow_id,
        step=row.step,
    )


_VIEW_FIELDS = tuple(JobView.model_fields)


def job_view_data(row: Mapping[str, Any]) -> dict[str, Any]:
    """`job_view(row).model_dump(mode="json")`, from a job's columns by name, without building
    and validating the model (the events' hot path: the row is the ledger's, typed already)."""
    view = {name: row.get(name) for name in _VIEW_FIELDS}
    view["next_retry_at"] = row["available_at"] if row["state"] == JobState.RETRYING else None
    view["unique_key"] = shown_unique_key(row["unique_key"])
    return dict(to_jsonable_python(view))


def attempt_view(row: Row[Any]) -> AttemptView:
    return AttemptView(
        run=row.run,
        attempt=row.attempt,
        worker_id=row.worker_id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=row.outcome,
        error=row.error,
        duration_seconds=row.duration_seconds,
    )
