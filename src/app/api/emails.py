"""`POST /api/v1/emails`: the seed's example endpoint, and the pattern to copy for your own.

A pydantic body, a session dependency, and the task's own `enqueue` in that session: the
job is written in the route's transaction, and exists only if it commits. Answer 202 with
the job's `Location` at once; the worker sends the mail.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response, status

from app.access.keys import Client, Scope
from app.api.auth import require
from app.api.deps import SessionDep
from app.api.metrics import JOBS_ACCEPTED
from app.api.responses import AUTH, BODY, UNAVAILABLE, responses
from app.api.schemas import JobAccepted
from app.jobs.enqueue import MAX_IDEMPOTENCY_KEY_LENGTH
from app.tasks.example import EmailPayload, send_email

router = APIRouter(prefix="/api/v1", tags=["jobs"])

Enqueuer = Annotated[Client, Depends(require(Scope.ENQUEUE))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        description="Repeat a POST safely: the same key and job return the first job.",
    ),
]


@router.post(
    "/emails",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    response_model_exclude_defaults=True,  # `duplicate` only when true, as POST /api/v1/jobs says it
    responses=responses(BODY, AUTH, UNAVAILABLE),
    summary="Send an email in the background",
    operation_id="enqueue_email",
)
async def post_email(
    email: EmailPayload,
    session: SessionDep,
    client: Enqueuer,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    job = await send_email.enqueue(
        email, session=session, idempotency_key=idempotency_key, client_id=client.key_id
    )
    await session.commit()  # the 202 follows the commit: a 202 means the job is durable
    status_url = f"/api/v1/jobs/{job.id}"
    response.headers["Location"] = status_url
    if job.duplicate:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        JOBS_ACCEPTED.labels(job.task).inc()
    return JobAccepted(
        id=job.id, task=job.task, state=job.state, status_url=status_url, duplicate=job.duplicate
    )
