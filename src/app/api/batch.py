"""`POST /api/v1/jobs/batch`: up to MAX_BATCH_JOBS jobs in one request, one INSERT, all or none.

Every item is checked before anything is written, and every invalid item is named in the 422
(`["body", "jobs", 3, "payload", "message"]`). The batch is written in one transaction of
its own, not through the group commit of single accepts: it already is a batch, and as one
statement it stands or falls whole. An Idempotency-Key covers the whole batch (`jobs.batches`).
An item whose unique key is held is no error: it is answered by its holder, `duplicate` set.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.access.keys import Client, Scope
from app.api.accept import ACCEPT_ERRORS, KEY_ON_BATCH, _documented_body, _idempotency_key, _parse
from app.api.auth import authenticate
from app.api.deps import transaction
from app.api.errors import field_errors, unstorable
from app.api.metrics import JOBS_ACCEPTED
from app.api.schemas import JobBatchAccepted, JobBatchRequest, JobRequest
from app.errors import UnknownTask, UnstorableInput
from app.jobs import batches
from app.jobs import enqueue as accepting
from app.jobs.enqueue import Accepted
from app.jobs.registry import get_task, public_tasks
from app.ledger.jobs import NewJob
from app.settings import get_settings
from app.tracing import enqueuing as traced

router = APIRouter(prefix="/api/v1", tags=["jobs"])


def _too_many(count: int, limit: int) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "loc": ("body", "jobs"),
                "msg": f"at most {limit} jobs in one batch (MAX_BATCH_JOBS), got {count}",
                "type": "too_long",
            }
        ]
    )


def _unknown(name: str, loc: tuple[str | int, ...]) -> dict[str, Any]:
    known = [spec.name for spec in public_tasks()]
    return {"loc": loc, "msg": str(UnknownTask(name, known)), "type": "unknown_task"}


def new_jobs(items: list[JobRequest], client: Client) -> list[NewJob]:
    """The batch's jobs; a 422 naming every invalid item by its index, before anything is stored."""
    jobs: list[NewJob] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        at: tuple[str | int, ...] = ("body", "jobs", index)
        spec = get_task(item.task)
        if spec is None or not spec.public:
            errors.append(_unknown(item.task, (*at, "task")))
            continue
        try:
            jobs.append(
                accepting.new_job(
                    spec,
                    item.payload,
                    delay_seconds=item.delay_seconds,
                    priority=item.priority,
                    client_id=client.key_id,
                    unique_key=item.unique_key,
                )
            )
        except ValidationError as error:
            errors += field_errors(error.errors(), (*at, "payload"))
        except UnstorableInput as error:
            errors += unstorable(error, (*at, "payload")).errors()
    if errors:
        raise RequestValidationError(errors)
    return jobs


def _answer(job: Accepted) -> dict[str, object]:
    answer: dict[str, object] = {
        "id": job.id,
        "task": job.task,
        "state": job.state,
        "status_url": f"/api/v1/jobs/{job.id}",
    }
    if job.duplicate:  # as for a single job: said only when true
        answer["duplicate"] = True
    return answer


@router.post(
    "/jobs/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobBatchAccepted,
    responses=ACCEPT_ERRORS,
    summary="Enqueue many jobs at once, all or none",
    operation_id="enqueue_job_batch",
    openapi_extra=_documented_body(JobBatchRequest, KEY_ON_BATCH),
)
async def enqueue_batch(request: Request) -> Response:
    client = await authenticate(request, Scope.ENQUEUE)
    key = _idempotency_key(request)
    batch = _parse(JobBatchRequest, await request.body())
    limit = get_settings().max_batch_jobs
    if len(batch.jobs) > limit:
        raise _too_many(len(batch.jobs), limit)
    with traced(None, len(batch.jobs)):
        jobs = new_jobs(batch.jobs, client)
        async with transaction() as conn:
            accepted = await batches.store_many(conn, jobs, idempotency_key=key)
    headers = {}
    if accepted[0].replayed:
        headers["Idempotent-Replayed"] = "true"
    for task, count in Counter(job.task for job in accepted if not job.duplicate).items():
        JOBS_ACCEPTED.labels(task).inc(count)
    body = {"jobs": [_answer(job) for job in accepted]}
    return Response(orjson.dumps(body), status_code=202, headers=headers, media_type="application/json")
