"""The jobs routes of the HTTP contract (v1)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.accept import jobs as accepting
from app.accept.intake import Intake
from app.accept.jobs import MAX_IDEMPOTENCY_KEY_LENGTH
from app.api.deps import ReadDep, TxDep
from app.api.errors import field_errors
from app.api.metrics import JOBS_ACCEPTED
from app.api.schemas import (
    EmailRequest,
    ErrorBody,
    JobAccepted,
    JobList,
    JobRequest,
    RetryPolicyView,
    TaskView,
)
from app.errors import JobNotFound, UnknownTask
from app.jobs.registry import TaskSpec, get_task, public_tasks
from app.ledger.engines import async_engine
from app.ledger.jobs import NewJob
from app.ledger.schema import JobState
from app.operate import actions, reads
from app.operate.views import AttemptView, JobView, attempt_view, job_view
from app.settings import get_settings

router = APIRouter(prefix="/api/v1", tags=["jobs"])

EMAIL_TASK = "app.tasks.example.send_email"
M = TypeVar("M", bound=BaseModel)

BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON"},
    413: {"model": ErrorBody, "description": "Body larger than MAX_BODY_BYTES (also when chunked)"},
    415: {"model": ErrorBody, "description": "Body is not JSON"},
    422: {
        "model": ErrorBody,
        "description": "Unknown task, invalid payload, or reused Idempotency-Key",
    },
}


def _parse(model: type[M], body: bytes) -> M:
    """Validate a request body straight from its bytes (malformed JSON → 400, invalid → 422)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(field_errors(error.errors(), ("body",))) from None


def _new_job(
    spec: TaskSpec[Any],
    payload: Any,
    loc: tuple[str, ...],
    *,
    key: str | None,
    delay_seconds: int = 0,
    priority: int = 0,
) -> NewJob:
    try:
        return accepting.new_job(
            spec, payload, delay_seconds=delay_seconds, priority=priority, idempotency_key=key
        )
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
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise RequestValidationError(
            [
                {
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
                    "type": "string_length",
                }
            ]
        )
    return key


async def _accept(request: Request, job: NewJob) -> Response:
    if job.idempotency_key is None:
        job_id, state, duplicate = await _intake(request).submit(job), JobState.QUEUED.value, False
    else:
        async with async_engine().begin() as conn:
            accepted = await accepting.store(conn, job)
        job_id, state, duplicate = accepted.id, accepted.state, accepted.duplicate
    status_url = f"/api/v1/jobs/{job_id}"
    headers = {"Location": status_url}
    if duplicate:
        headers["Idempotent-Replayed"] = "true"
    else:
        JOBS_ACCEPTED.labels(job.task).inc()
    body = {"id": job_id, "task": job.task, "state": state, "status_url": status_url}
    return Response(orjson.dumps(body), status_code=202, headers=headers, media_type="application/json")


def _documented_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
    header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Repeat a POST safely: the same key and body return the first job.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
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
    new = _new_job(
        spec,
        job.payload,
        ("body", "payload"),
        key=key,
        delay_seconds=job.delay_seconds,
        priority=job.priority,
    )
    return await _accept(request, new)


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
    return await _accept(request, _new_job(spec, email.model_dump(mode="json"), ("body",), key=key))


@router.get("/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorBody}})
async def get_job(job_id: UUID, conn: ReadDep) -> JobView:
    return job_view(await reads.get(conn, job_id))


@router.get(
    "/jobs/{job_id}/attempts",
    response_model=list[AttemptView],
    responses={404: {"model": ErrorBody}},
)
async def get_attempts(job_id: UUID, conn: ReadDep) -> list[AttemptView]:
    await reads.get(conn, job_id)
    return [attempt_view(row) for row in await reads.attempts_of(conn, job_id)]


@router.get(
    "/jobs/{job_id}/artifact",
    responses={200: {"content": {"text/csv": {}}}, 404: {"model": ErrorBody}},
    summary="The file a job produced (the CSV of export_jobs)",
)
async def get_artifact(job_id: UUID, conn: ReadDep) -> Response:
    row = await reads.artifact(conn, job_id)
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
        rows, next_cursor = await reads.page(
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
    dead_run = await actions.replay(conn, job_id)
    row = await reads.get(conn, job_id)
    # After the commit and the answer: take the dead run's copy out of <queue>.XQ.
    background.add_task(actions.forget_dead_letters_quietly, get_settings().broker_url, [dead_run])
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
    await actions.cancel(conn, job_id)
    return job_view(await reads.get(conn, job_id))


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
