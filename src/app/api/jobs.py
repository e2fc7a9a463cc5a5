"""The routes that read and steer jobs (v1): a job, its attempts and artifact, lists, replay, cancel."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator

from app.accept.validation import storable_text
from app.api.deps import reading, transaction
from app.api.responses import INVALID, NOT_FOUND, UNAVAILABLE, responses
from app.api.schemas import ErrorBody, JobAccepted, JobList, RetryPolicyView, TaskView
from app.errors import JobNotFound
from app.jobs.registry import public_tasks
from app.ledger.schema import JobState
from app.operate import actions, reads
from app.operate.views import AttemptView, JobView, attempt_view, job_view

router = APIRouter(prefix="/api/v1", tags=["jobs"])

QueryText = Annotated[str | None, Query(max_length=200), AfterValidator(lambda v: v and storable_text(v))]
ONE_JOB = responses(NOT_FOUND, INVALID, UNAVAILABLE)


@router.get("/jobs/{job_id}", response_model=JobView, responses=ONE_JOB)
async def get_job(job_id: UUID) -> JobView:
    async with reading() as conn:
        return job_view(await reads.get(conn, job_id))


@router.get("/jobs/{job_id}/attempts", response_model=list[AttemptView], responses=ONE_JOB)
async def get_attempts(job_id: UUID) -> list[AttemptView]:
    async with reading() as conn:
        await reads.get(conn, job_id)
        return [attempt_view(row) for row in await reads.attempts_of(conn, job_id)]


@router.get(
    "/jobs/{job_id}/artifact",
    responses=responses({200: {"content": {"text/csv": {}}}}, ONE_JOB),
    summary="The file a job produced (the CSV of export_jobs)",
)
async def get_artifact(job_id: UUID) -> Response:
    async with reading() as conn:
        row = await reads.artifact(conn, job_id)
    if row is None:
        raise JobNotFound(f"{job_id} (or its artifact)")
    return Response(
        content=row.content,
        media_type=row.content_type,
        headers={"Content-Disposition": f'attachment; filename="{row.name}"'},
    )


@router.get("/jobs", response_model=JobList, responses=responses(INVALID, UNAVAILABLE))
async def list_jobs(
    state: JobState | None = None,
    task: QueryText = None,
    schedule: QueryText = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: QueryText = None,
) -> JobList:
    cursor = cursor or None  # `?cursor=` is the first page
    try:
        if cursor is not None:
            reads.decode_cursor(cursor)
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("query", "cursor"), "msg": "invalid cursor", "type": "value_error"}]
        ) from None
    async with reading() as conn:
        rows, next_cursor = await reads.page(
            conn,
            state=state.value if state else None,
            task=task,
            schedule=schedule,
            limit=limit,
            cursor=cursor,
        )
    return JobList(items=[job_view(r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/jobs/{job_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=responses(ONE_JOB, {409: {"model": ErrorBody, "description": "Job is not dead"}}),
)
async def replay_job(job_id: UUID, response: Response) -> JobAccepted:
    async with transaction() as conn:
        await actions.replay(conn, job_id)
        row = await reads.get(conn, job_id)
    status_url = f"/api/v1/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(id=row.id, task=row.task, state=row.state, status_url=status_url)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    responses=responses(ONE_JOB, {409: {"model": ErrorBody, "description": "Job has started or ended"}}),
)
async def cancel_job(job_id: UUID) -> JobView:
    async with transaction() as conn:
        await actions.cancel(conn, job_id)
        row = await reads.get(conn, job_id)
    return job_view(row)


@router.get("/tasks", response_model=list[TaskView], tags=["tasks"])
async def list_tasks() -> list[TaskView]:
    return [
        TaskView(
            name=spec.name,
            description=spec.description,
            queue=spec.queue,
            payload_schema=spec.payload_model.model_json_schema(),
            retry=RetryPolicyView(
                max_attempts=spec.retry.resolved_max_attempts(),
                backoff_base_seconds=spec.retry.resolved_base(),
                backoff_max_seconds=spec.retry.resolved_max(),
            ),
            time_limit_seconds=spec.time_limit_seconds,
        )
        for spec in public_tasks()
    ]
