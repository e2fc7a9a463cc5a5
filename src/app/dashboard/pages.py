"""The dashboard's pages and the fragments htmx polls to keep them current.

Every query here uses an index and reads a bounded number of rows, so a refresh costs
the same with a hundred jobs in the ledger or a hundred thousand.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.api.deps import reading
from app.dashboard.access import viewer
from app.dashboard.queues import queue_depths
from app.dashboard.rendering import query, render
from app.dashboard.throughput import minute_counts
from app.dashboard.views import throughput_chart
from app.errors import JobNotFound
from app.jobs.enqueue import shown_unique_key
from app.jobs.flow import describe
from app.jobs.registry import get_task, public_tasks
from app.jobs.validation import storable_text
from app.ledger.schema import TERMINAL_STATES, JobState
from app.operate import queues as queueing
from app.operate import reads as service
from app.operate import schedules as scheduling
from app.operate import stats

router = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(viewer)])

PAGE_SIZE = 50
RUNNING_SHOWN = 10
RECENT_JOBS_SHOWN = 8
TaskFilter = Annotated[str, Query(max_length=200), AfterValidator(storable_text)]
CursorParam = Annotated[str, Query(max_length=200), AfterValidator(storable_text)]


async def overview_context(request: Request, conn: AsyncConnection) -> dict[str, Any]:
    broker = asyncio.ensure_future(run_in_threadpool(queue_depths))
    counts = await stats.counts_by_state(conn)
    now = await service.now(conn)
    throughput = await minute_counts(request.app).last_hour(conn, now)
    workers = await stats.workers(conn, limit=50)
    running, _ = await service.page(conn, state=JobState.RUNNING, limit=RUNNING_SHOWN)
    return {
        "counts": counts,
        "backlog": await stats.outbox_backlog(conn),
        "oldest_waiting": await stats.oldest_waiting_seconds(conn),
        "chart": throughput_chart(throughput, now),
        "workers": workers,
        "live_workers": sum(1 for w in workers if w["live"]),
        "running": running,
        "broker": await broker,
        "queue_states": {view.name: view for view in await queueing.overview(conn)},
    }


@router.get("")
async def overview(request: Request) -> Response:
    async with reading() as conn:
        context = await overview_context(request, conn)
    return render(request, "overview.html", {"nav": "overview", **context})


@router.get("/fragments/overview")
async def overview_fragment(request: Request) -> Response:
    async with reading() as conn:
        context = await overview_context(request, conn)
    return render(request, "_overview.html", context, page=False)


def _state(value: str) -> JobState | None:
    if not value:
        return None
    try:
        return JobState(value)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown state {value!r}") from None


def _cursor(value: str) -> str | None:
    if not value:
        return None
    try:
        service.decode_cursor(value)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid cursor") from None
    return value


async def jobs_context(
    conn: AsyncConnection,
    state: JobState | None,
    task: str,
    cursor: str | None,
    *,
    dead_only: bool = False,
    schedule: str = "",
) -> dict[str, Any]:
    chosen = JobState.DEAD if dead_only else state
    rows, next_cursor = await service.page(
        conn, state=chosen, task=task or None, schedule=schedule or None, limit=PAGE_SIZE, cursor=cursor
    )
    filters = {"state": "" if dead_only else chosen or "", "task": task}
    if schedule:
        filters["schedule"] = schedule
    return {
        "rows": rows,
        "filters": filters,
        "cursor": cursor or "",
        "this_query": query(**filters, cursor=cursor),
        "next_query": query(**filters, cursor=next_cursor) if next_cursor else None,
        "first_query": query(**filters),
        "tasks": sorted(spec.name for spec in public_tasks()),
        "states": [s.value for s in JobState],
    }


@router.get("/jobs")
async def jobs_page(
    request: Request,
    state: str = "",
    task: TaskFilter = "",
    cursor: CursorParam = "",
    schedule: TaskFilter = "",
) -> Response:
    chosen, after = _state(state), _cursor(cursor)
    async with reading() as conn:
        context = await jobs_context(conn, chosen, task, after, schedule=schedule)
        context["counts"] = await stats.counts_by_state(conn)
    return render(request, "jobs.html", {"nav": "jobs", **context})


@router.get("/fragments/jobs")
async def jobs_fragment(
    request: Request,
    state: str = "",
    task: TaskFilter = "",
    cursor: CursorParam = "",
    schedule: TaskFilter = "",
) -> Response:
    chosen, after = _state(state), _cursor(cursor)
    async with reading() as conn:
        context = await jobs_context(conn, chosen, task, after, schedule=schedule)
    return render(request, "_jobs.html", context, page=False)


async def schedules_context(conn: AsyncConnection, cursor: str) -> dict[str, Any]:
    after = cursor or None
    try:
        if after is not None:
            scheduling.decode_cursor(after)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid cursor") from None
    rows, next_cursor = await scheduling.page(conn, limit=PAGE_SIZE, cursor=after)
    return {
        "rows": rows,
        "recent": await scheduling.recent_jobs(conn, [row.name for row in rows], RECENT_JOBS_SHOWN),
        "describe": scheduling.describe,
        "cursor": after or "",
        "this_query": query(cursor=after),
        "next_query": query(cursor=next_cursor) if next_cursor else None,
    }


@router.get("/schedules")
async def schedules_page(request: Request, cursor: CursorParam = "") -> Response:
    async with reading() as conn:
        context = await schedules_context(conn, cursor)
    return render(request, "schedules.html", {"nav": "schedules", **context})


@router.get("/fragments/schedules")
async def schedules_fragment(request: Request, cursor: CursorParam = "") -> Response:
    async with reading() as conn:
        context = await schedules_context(conn, cursor)
    return render(request, "_schedules.html", context, page=False)


async def job_context(conn: AsyncConnection, job_id: UUID) -> dict[str, Any]:
    job = await service.get(conn, job_id)
    return {
        "job": job,
        "attempts": await service.attempts_of(conn, job_id),
        "children": await service.children(conn, job_id),
        "terminal": job.state in TERMINAL_STATES,
        "can_replay": job.state == JobState.DEAD,
        "can_cancel": job.state in (JobState.QUEUED, JobState.RETRYING, JobState.RUNNING),
        "limits": _limits(job.task),
        "unique_key": shown_unique_key(job.unique_key),
    }


def _limits(task: str) -> str:
    """The task's concurrency and rate limits in words ('' without any, or for an unknown task)."""
    spec = get_task(task)
    return "" if spec is None else describe(spec.limits)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: UUID) -> Response:
    try:
        async with reading() as conn:
            context = await job_context(conn, job_id)
    except JobNotFound:
        return render(request, "missing.html", {"nav": "jobs", "job_id": job_id}, status_code=404)
    return render(request, "job.html", {"nav": "jobs", **context})


@router.get("/fragments/jobs/{job_id}")
async def job_fragment(request: Request, job_id: UUID) -> Response:
    try:
        async with reading() as conn:
            context = await job_context(conn, job_id)
    except JobNotFound:
        return render(request, "missing.html", {"job_id": job_id}, page=False, status_code=404)
    return render(request, "_job.html", context, page=False)


async def dead_context(conn: AsyncConnection, task: str, cursor: str | None) -> dict[str, Any]:
    context = await jobs_context(conn, None, task, cursor, dead_only=True)
    by_task = await stats.dead_by_task(conn)
    return {**context, "by_task": by_task, "total": sum(by_task.values())}


@router.get("/dead")
async def dead_page(request: Request, task: TaskFilter = "", cursor: CursorParam = "") -> Response:
    after = _cursor(cursor)
    async with reading() as conn:
        context = await dead_context(conn, task, after)
    return render(request, "dead.html", {"nav": "dead", **context})


@router.get("/fragments/dead")
async def dead_fragment(request: Request, task: TaskFilter = "", cursor: CursorParam = "") -> Response:
    after = _cursor(cursor)
    async with reading() as conn:
        context = await dead_context(conn, task, after)
    return render(request, "_dead.html", context, page=False)


@router.get("/dead/confirm")
async def confirm_bulk(
    request: Request, action: Literal["replay", "discard"], task: TaskFilter = ""
) -> Response:
    async with reading() as conn:
        by_task = await stats.dead_by_task(conn)
    count = by_task.get(task, 0) if task else sum(by_task.values())
    context = {"nav": "dead", "action": action, "task": task, "count": count}
    return render(request, "confirm.html", context)
