"""The routes that read and steer jobs (v1): a job, its attempts and artifact, lists, replay, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator

from app.access.keys import Client, Scope
from app.api.audit import actor
from app.api.auth import authenticate
from app.api.deps import reading, transaction
from app.api.events import wait_until_finished
from app.api.responses import AUTH, INVALID, NOT_FOUND, UNAVAILABLE, responses
from app.api.schemas import ErrorBody, JobAccepted, JobList, LimitsView, RetryPolicyView, TaskView
from app.errors import JobNotFound
from app.jobs.registry import public_tasks
from app.jobs.validation import storable_text
from app.ledger.schema import JobState
from app.operate import actions, audit, reads
from app.operate.views import AttemptView, JobView, attempt_view, job_view

router = APIRouter(prefix="/api/v1", tags=["jobs"])

QueryText = Annotated[str | None, Query(max_length=200), AfterValidator(lambda v: v and storable_text(v))]
ONE_JOB = responses(NOT_FOUND, INVALID, AUTH, UNAVAILABLE)
# `read` sees every job; `enqueue` alone, only the jobs its key created. Each route checks
# its key first thing in its body: after FastAPI validated the path and the query, so bad
# input is a 422 even while the ledger (where keys are verified) is away.
READERS = (Scope.READ, Scope.ENQUEUE)
# Pieces of a file read per statement while it is sent: a few at a time, so a download holds
# a few pieces in memory, and a pooled connection only while it reads them.
PIECES_PER_READ = 4


def _own(client: Client) -> str | None:
    return None if client.reads_everything else client.key_id


@router.get("/jobs/{job_id}", response_model=JobView, responses=ONE_JOB)
async def get_job(
    job_id: UUID,
    request: Request,
    wait_seconds: Annotated[
        float, Query(ge=0, le=60, description="Answer once the job is finished or this many seconds passed")
    ] = 0,
) -> JobView:
    client = await authenticate(request, *READERS)
    if wait_seconds > 0:
        return await wait_until_finished(request, job_id, _own(client), wait_seconds)
    async with reading() as conn:
        return job_view(await reads.get(conn, job_id, _own(client)))


@router.get("/jobs/{job_id}/attempts", response_model=list[AttemptView], responses=ONE_JOB)
async def get_attempts(job_id: UUID, request: Request) -> list[AttemptView]:
    client = await authenticate(request, *READERS)
    async with reading() as conn:
        await reads.get(conn, job_id, _own(client))
        return [attempt_view(row) for row in await reads.attempts_of(conn, job_id)]


@router.get(
    "/jobs/{job_id}/artifact",
    responses=responses({200: {"content": {"text/csv": {}}}}, ONE_JOB),
    summary="The file a job produced (the CSV of export_jobs)",
)
async def get_artifact(job_id: UUID, request: Request) -> Response:
    client = await authenticate(request, *READERS)
    async with reading() as conn:
        await reads.get(conn, job_id, _own(client))
        row = await reads.artifact(conn, job_id)
    if row is None:
        raise JobNotFound(f"{job_id} (or its artifact)")
    headers = {"Content-Disposition": f'attachment; filename="{row.name}"'}
    if row.content is not None:  # stored whole, before files were kept in pieces
        return Response(content=row.content, media_type=row.content_type, headers=headers)
    if row.size is not None:
        headers["Content-Length"] = str(row.size)
    return StreamingResponse(_pieces(job_id), media_type=row.content_type, headers=headers)


async def _pieces(job_id: UUID) -> AsyncIterator[bytes]:
    """A file's pieces in order, each few read on a connection taken for that read alone: a slow
    client holds no pooled connection while it reads."""
    after = -1
    while True:
        async with reading() as conn:
            pieces = await reads.artifact_pieces(conn, job_id, after, PIECES_PER_READ)
        for _, content in pieces:
            yield content
        if len(pieces) < PIECES_PER_READ:
            return
        after = pieces[-1][0]


@router.get("/jobs", response_model=JobList, responses=responses(INVALID, AUTH, UNAVAILABLE))
async def list_jobs(
    request: Request,
    state: JobState | None = None,
    task: QueryText = None,
    schedule: QueryText = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: QueryText = None,
) -> JobList:
    client = await authenticate(request, *READERS)
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
            client_id=_own(client),
        )
    return JobList(items=[job_view(r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/jobs/{job_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    response_model_exclude_defaults=True,  # `duplicate` only when true, as POST /api/v1/jobs says it
    responses=responses(ONE_JOB, {409: {"model": ErrorBody, "description": "Job is not dead"}}),
)
async def replay_job(job_id: UUID, request: Request, response: Response) -> JobAccepted:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await actions.replay(conn, job_id)
        await audit.record(conn, actor(request, client), audit.Action.JOB_REPLAY, target=str(job_id))
        row = await reads.get(conn, job_id)
    status_url = f"/api/v1/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(id=row.id, task=row.task, state=row.state, status_url=status_url)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    summary="Cancel a job: at once if it has not started (200), by asking its worker if it runs (202)",
    responses=responses(
        ONE_JOB,
        {
            202: {
                "model": JobView,
                "description": "The job is running: its worker is asked to stop it, and it ends "
                "cancelled (or succeeded, if it finished first)",
            },
            409: {"model": ErrorBody, "description": "Job has ended"},
        },
    ),
)
async def cancel_job(job_id: UUID, request: Request, response: Response) -> JobView:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        outcome = await actions.cancel(conn, job_id)
        detail = {"running": True} if outcome == "requested" else None
        who = actor(request, client)
        await audit.record(conn, who, audit.Action.JOB_CANCEL, target=str(job_id), detail=detail)
        row = await reads.get(conn, job_id)
    if outcome == "requested":
        response.status_code = status.HTTP_202_ACCEPTED
    return job_view(row)


@router.get("/tasks", response_model=list[TaskView], tags=["tasks"], responses=AUTH)
async def list_tasks(request: Request) -> list[TaskView]:
    await authenticate(request, *READERS)
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
            unique_key=spec.unique_key,
            limits=LimitsView(
                concurrency=spec.limits.concurrency,
                concurrency_key=spec.limits.concurrency_key,
                rate=None if spec.limits.rate is None else spec.limits.rate.text,
                rate_key=spec.limits.rate_key,
            ),
        )
        for spec in public_tasks()
    ]
