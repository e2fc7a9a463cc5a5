"""The jobs routes of the HTTP contract (v1)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import Row

from app.api.deps import IdempotencyKeyDep, ReadDep, TxDep
from app.api.errors import field_errors
from app.api.metrics import JOBS_ACCEPTED
from app.api.schemas import (
    AttemptView,
    EmailRequest,
    ErrorBody,
    JobAccepted,
    JobList,
    JobRequest,
    JobView,
    RetryPolicyView,
    TaskView,
)
from app.db.schema import JobState
from app.errors import JobNotFound, UnknownTask
from app.registry import TaskSpec, get_task, public_tasks
from app.services import jobs as service

router = APIRouter(prefix="/api/v1", tags=["jobs"])

EMAIL_TASK = "app.tasks.example.send_email"

BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON"},
    413: {"model": ErrorBody, "description": "Body larger than MAX_BODY_BYTES (also when chunked)"},
    415: {"model": ErrorBody, "description": "Body is not JSON"},
    422: {
        "model": ErrorBody,
        "description": "Unknown task, invalid payload, or reused Idempotency-Key",
    },
}


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
    )


def _validated(spec: TaskSpec[Any], payload: dict[str, Any], loc: tuple[str, ...]) -> dict[str, Any]:
    try:
        validated: dict[str, Any] = spec.payload_model.model_validate(payload).model_dump(mode="json")
        return validated
    except ValidationError as error:
        raise RequestValidationError(field_errors(error.errors(), loc)) from None


async def _accept(
    conn: TxDep,
    response: Response,
    spec: TaskSpec[Any],
    payload: dict[str, Any],
    key: str | None,
    route: str,
    fingerprint_body: dict[str, Any],
    delay_seconds: int = 0,
    priority: int = 0,
) -> JobAccepted:
    accepted = await service.accept(
        conn,
        task=spec.name,
        queue=spec.queue,
        payload=payload,
        max_attempts=spec.retry.resolved_max_attempts(),
        delay_seconds=delay_seconds,
        priority=priority,
        idempotency_key=key,
        fingerprint=service.request_fingerprint(route, fingerprint_body) if key else None,
    )
    status_url = f"/api/v1/jobs/{accepted.id}"
    response.headers["Location"] = status_url
    if accepted.duplicate:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        JOBS_ACCEPTED.labels(spec.name).inc()
    return JobAccepted(id=accepted.id, task=accepted.task, state=accepted.state, status_url=status_url)


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=BODY_ERRORS,
    summary="Enqueue a job of any public task",
)
async def enqueue(
    request: JobRequest, conn: TxDep, response: Response, key: IdempotencyKeyDep = None
) -> JobAccepted:
    spec = get_task(request.task)
    if spec is None or not spec.public:
        raise UnknownTask(request.task, [t.name for t in public_tasks()])
    payload = _validated(spec, request.payload, ("body", "payload"))
    return await _accept(
        conn,
        response,
        spec,
        payload,
        key,
        "/api/v1/jobs",
        request.model_dump(mode="json"),
        delay_seconds=request.delay_seconds,
        priority=request.priority,
    )


@router.post(
    "/emails",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=BODY_ERRORS,
    summary="Send an email in the background",
)
async def send_email(
    request: EmailRequest, conn: TxDep, response: Response, key: IdempotencyKeyDep = None
) -> JobAccepted:
    spec = get_task(EMAIL_TASK)
    assert spec is not None
    body = request.model_dump(mode="json")
    payload = _validated(spec, body, ("body",))
    return await _accept(conn, response, spec, payload, key, "/api/v1/emails", body)


@router.get("/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorBody}})
async def get_job(job_id: UUID, conn: ReadDep) -> JobView:
    return job_view(await service.get(conn, job_id))


@router.get(
    "/jobs/{job_id}/attempts",
    response_model=list[AttemptView],
    responses={404: {"model": ErrorBody}},
)
async def get_attempts(job_id: UUID, conn: ReadDep) -> list[AttemptView]:
    await service.get(conn, job_id)
    rows = await service.attempts_of(conn, job_id)
    return [
        AttemptView(
            run=r.run,
            attempt=r.attempt,
            worker_id=r.worker_id,
            started_at=r.started_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            error=r.error,
            duration_seconds=r.duration_seconds,
        )
        for r in rows
    ]


@router.get(
    "/jobs/{job_id}/artifact",
    responses={200: {"content": {"text/csv": {}}}, 404: {"model": ErrorBody}},
    summary="The file a job produced (the CSV of export_jobs)",
)
async def get_artifact(job_id: UUID, conn: ReadDep) -> Response:
    row = await service.artifact(conn, job_id)
    if row is None:
        raise JobNotFound(f"{job_id} (or its artifact)")
    return Response(
        content=row.content,
        media_type=row.content_type,
        headers={"Content-Disposition": f'attachment; filename="{row.name}"'},
    )


@router.get("/jobs", response_model=JobList, responses={422: {"model": ErrorBody}})
async def list_jobs(
    conn: ReadDep,
    state: JobState | None = None,
    task: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobList:
    try:
        rows, next_cursor = await service.page(
            conn, state=state.value if state else None, task=task, limit=limit, cursor=cursor
        )
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("query", "cursor"), "msg": "invalid cursor", "type": "value_error"}]
        ) from None
    return JobList(items=[job_view(r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/jobs/{job_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "Job is not dead"},
    },
)
async def replay_job(job_id: UUID, conn: TxDep, response: Response) -> JobAccepted:
    await service.replay(conn, job_id)
    row = await service.get(conn, job_id)
    status_url = f"/api/v1/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(id=row.id, task=row.task, state=row.state, status_url=status_url)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "Job has started or ended"},
    },
)
async def cancel_job(job_id: UUID, conn: TxDep) -> JobView:
    await service.cancel(conn, job_id)
    return job_view(await service.get(conn, job_id))


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
