"""`POST /api/v1/jobs`: a job of any public task, the hot path of the performance budget.

It reads its body and its Idempotency-Key by hand (no dependency solving) and hands jobs
without a key to the group commit (`accept.intake`). For the pattern to copy into your own
endpoints, read `api/emails.py` instead.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.accept.intake import Intake
from app.access.keys import Client, Scope
from app.api.auth import authenticate
from app.api.deps import transaction
from app.api.errors import field_errors, unstorable
from app.api.metrics import JOBS_ACCEPTED
from app.api.responses import AUTH, BODY, IN_FLIGHT, UNAVAILABLE, responses
from app.api.schemas import JobAccepted, JobRequest
from app.errors import UnknownTask, UnstorableInput
from app.jobs import enqueue as accepting
from app.jobs.enqueue import MAX_IDEMPOTENCY_KEY_LENGTH
from app.jobs.registry import TaskSpec, get_task, public_tasks
from app.ledger.jobs import NewJob
from app.ledger.urls import own_conninfo
from app.tracing import enqueuing as traced

router = APIRouter(prefix="/api/v1", tags=["jobs"])

M = TypeVar("M", bound=BaseModel)
ACCEPT_ERRORS = responses(BODY, AUTH, IN_FLIGHT, UNAVAILABLE)


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
    client: Client,
    key: str | None,
    delay_seconds: int = 0,
    priority: int = 0,
    unique_key: str | None = None,
) -> NewJob:
    try:
        return accepting.new_job(
            spec,
            payload,
            delay_seconds=delay_seconds,
            priority=priority,
            idempotency_key=key,
            client_id=client.key_id,
            unique_key=unique_key,
        )
    except ValidationError as error:
        raise RequestValidationError(field_errors(error.errors(), loc)) from None
    except UnstorableInput as error:
        raise unstorable(error, loc) from None


def _intake(request: Request) -> Intake:
    intake: Intake | None = getattr(request.app.state, "intake", None)
    if intake is None:
        intake = request.app.state.intake = Intake(own_conninfo())
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
        accepted = await _intake(request).submit(job)
    else:
        async with transaction() as conn:
            accepted = await accepting.store(conn, job)
    status_url = f"/api/v1/jobs/{accepted.id}"
    headers = {"Location": status_url}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if not accepted.duplicate:
        JOBS_ACCEPTED.labels(job.task).inc()
    body: dict[str, object] = {
        "id": accepted.id,
        "task": job.task,
        "state": accepted.state,
        "status_url": status_url,
    }
    if accepted.duplicate:  # said only when true, so a new job's answer stays what it always was
        body["duplicate"] = True
    return Response(orjson.dumps(body), status_code=202, headers=headers, media_type="application/json")


# What an Idempotency-Key does on each route that takes one (the OpenAPI header's description).
KEY_ON_JOB = (
    "Repeat a POST safely: the same key with the same job returns the first job (same id, no new"
    " job, `Idempotent-Replayed: true`); with another job, or a key a batch or a workflow holds, it"
    " is a 422. A key belongs to its client; kept at least IDEMPOTENCY_KEY_TTL_SECONDS."
)
KEY_ON_BATCH = (
    "Repeat a POST safely: the key covers the whole batch. The same key with the same batch returns"
    " the first batch's jobs (same ids, nothing stored, `Idempotent-Replayed: true`); with another"
    " batch, or a key a single job or a workflow holds, it is a 422. A key belongs to its client;"
    " kept at least IDEMPOTENCY_KEY_TTL_SECONDS."
)
KEY_ON_WORKFLOW = (
    "Repeat a POST safely: the same key with the same workflow (its name and steps, their order"
    " aside) answers the first workflow (same ids, its state now, nothing stored,"
    " `Idempotent-Replayed: true`); with another workflow, or a key a job holds, it is a 422."
    " A key belongs to its client; kept at least IDEMPOTENCY_KEY_TTL_SECONDS."
)


def _documented_body(model: type[BaseModel], key_means: str) -> dict[str, Any]:
    """The body's schema and the Idempotency-Key header, described as `key_means` says."""
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
    header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": key_means,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
    }
    return {"requestBody": schema, "parameters": [header]}


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=ACCEPT_ERRORS,
    summary="Enqueue a job of any public task",
    operation_id="enqueue_job",
    openapi_extra=_documented_body(JobRequest, KEY_ON_JOB),
)
async def enqueue(request: Request) -> Response:
    client = await authenticate(request, Scope.ENQUEUE)
    key = _idempotency_key(request)
    job = _parse(JobRequest, await request.body())
    spec = get_task(job.task)
    if spec is None or not spec.public:
        raise UnknownTask(job.task, [t.name for t in public_tasks()])
    with traced(spec.name):
        new = _new_job(
            spec,
            job.payload,
            ("body", "payload"),
            client=client,
            key=key,
            delay_seconds=job.delay_seconds,
            priority=job.priority,
            unique_key=job.unique_key,
        )
        return await _accept(request, new)
