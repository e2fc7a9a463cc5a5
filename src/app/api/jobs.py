"""The jobs routes of the HTTP contract (v1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import Row

from app import deadletters
from app.api.deps import ReadDep, TxDep
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
from app.db.engine import async_engine
from app.db.schema import JobState
from app.errors import JobNotFound, UnknownTask
from app.registry import Payload, TaskSpec, get_task, public_tasks
from app.services import jobs as service
from app.services.intake import Intake, NewJob
from app.settings import get_settings

router = APIRouter(prefix="/api/v1", tags=["jobs"])

EMAIL_TASK = "app.tasks.example.send_email"
M = TypeVar("M", bound=BaseModel)
MAX_KEY_LENGTH = 255

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


def _parse(model: type[M], body: bytes) -> M:
    """Validate a request body straight from its bytes (malformed JSON → 400, invalid → 422)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(field_errors(error.errors(), ("body",))) from None


def _payload(spec: TaskSpec[Any], payload: dict[str, Any], loc: tuple[str, ...]) -> Payload:
    try:
        validated: Payload = spec.payload_model.model_validate(payload)
        return validated
    except ValidationError as error:
        raise RequestValidationError(field_errors(error.errors(), loc)) from None


def _intake(request: Request) -> Intake:
    intake: Intake | None = getattr(request.app.state, "intake", None)
    if intake is None:
        intake = request.app.state.intake = Intake(get_settings().libpq_url)
    return intake


def _idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header, read by hand: the accept route skips FastAPI's dependency solver."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise RequestValidationError(
            [
                {
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"must be 1 to {MAX_KEY_LENGTH} characters",
                    "type": "string_length",
                }
            ]
        )
    return key


async def _accept(
    request: Request,
    spec: TaskSpec[Any],
    payload: Payload,
    key: str | None,
    fingerprint_body: Callable[[], dict[str, Any]],
    delay_seconds: int = 0,
    priority: int = 0,
) -> Response:
    max_attempts = spec.retry.resolved_max_attempts()
    if key is None:
        job = NewJob(spec.name, spec.queue, payload.model_dump_json(), max_attempts, delay_seconds, priority)
        job_id, state, duplicate = await _intake(request).submit(job), "queued", False
    else:
        async with async_engine().begin() as conn:
            accepted = await service.accept(
                conn,
                task=spec.name,
                queue=spec.queue,
                payload=payload.model_dump(mode="json"),
                max_attempts=max_attempts,
                delay_seconds=delay_seconds,
                priority=priority,
                idempotency_key=key,
                fingerprint=service.request_fingerprint(request.url.path, fingerprint_body()),
            )
        job_id, state, duplicate = accepted.id, accepted.state, accepted.duplicate
    status_url = f"/api/v1/jobs/{job_id}"
    headers = {"Location": status_url}
    if duplicate:
        headers["Idempotent-Replayed"] = "true"
    else:
        JOBS_ACCEPTED.labels(spec.name).inc()
    body = {"id": job_id, "task": spec.name, "state": state, "status_url": status_url}
    return Response(orjson.dumps(body), status_code=202, headers=headers, media_type="application/json")


def _documented_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
    header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Repeat a POST safely: the same key and body return the first job.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    }
    return {"requestBody": schema, "parameters": [header]}


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=BODY_ERRORS,
    summary="Enqueue a job of any public task",
    openapi_extra=_documented_body(JobRequest),
)
async def enqueue(request: Request) -> Response:
    key = _idempotency_key(request)
    job = _parse(JobRequest, await request.body())
    spec = get_task(job.task)
    if spec is None or not spec.public:
        raise UnknownTask(job.task, [t.name for t in public_tasks()])
    payload = _payload(spec, job.payload, ("body", "payload"))
    return await _accept(
        request,
        spec,
        payload,
        key,
        lambda: job.model_dump(mode="json"),
        delay_seconds=job.delay_seconds,
        priority=job.priority,
    )


@router.post(
    "/emails",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=BODY_ERRORS,
    summary="Send an email in the background",
    openapi_extra=_documented_body(EmailRequest),
)
async def send_email(request: Request) -> Response:
    key = _idempotency_key(request)
    email = _parse(EmailRequest, await request.body())
    spec = get_task(EMAIL_TASK)
    assert spec is not None
    body = email.model_dump(mode="json")
    payload = _payload(spec, body, ("body",))
    return await _accept(request, spec, payload, key, lambda: body)


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
async def replay_job(
    job_id: UUID, conn: TxDep, response: Response, background: BackgroundTasks
) -> JobAccepted:
    await service.replay(conn, job_id)
    row = await service.get(conn, job_id)
    # After the commit and the answer: take the dead run's copy out of <queue>.XQ.
    background.add_task(deadletters.remove_quietly, get_settings().broker_url, row.queue, [job_id])
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
