"""What an operator can do from the dashboard: replay, cancel and discard, one job or in bulk;
pause and resume a schedule or a queue.

Actions are plain HTML form posts that answer with a redirect (303) to the page they came
from, so they work without JavaScript; htmx only makes them smoother. Every action first
passes the same-origin check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qsl
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import RedirectResponse

from app.api.audit import actor
from app.api.deps import transaction
from app.dashboard.access import operator
from app.dashboard.rendering import Notice, leave_notice, safe_next
from app.dashboard.security import require_same_origin
from app.dashboard.throughput import minute_counts
from app.errors import (
    InvalidTransition,
    JobNotFound,
    QueueNotFound,
    ScheduleNotFound,
    WorkflowEnded,
    WorkflowNotFound,
)
from app.jobs.schedules import NAME_PATTERN
from app.jobs.validation import storable_text
from app.ledger.engines import async_engine
from app.operate import actions, audit
from app.operate import queues as queueing
from app.operate import schedules as scheduling
from app.operate.actions import BulkAction

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

# Same origin first (another site's form is refused before anything else), then the scope.
router = APIRouter(
    prefix="/dashboard",
    include_in_schema=False,
    dependencies=[Depends(require_same_origin), Depends(operator)],
)

# At most this many jobs per bulk action (the confirm page shows how many there are).
BULK_MAX = 100_000
BULK_DONE: dict[BulkAction, str] = {"replay": "replayed", "discard": "discarded"}


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form (the only kind the dashboard sends)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if body and media != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "expected a urlencoded form")
    fields = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    for name, value in fields.items():
        try:
            storable_text(value)
        except ValueError as error:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"form field {name!r} {error}"
            ) from None
    return fields


def back(request: Request, fields: dict[str, str], default: str, notice: Notice) -> RedirectResponse:
    if notice.kind in {"replayed", "discarded"} and notice.count:
        # Those jobs no longer finished when the cached chart says they did.
        minute_counts(request.app).forget()
    response = RedirectResponse(safe_next(fields.get("next"), default), status.HTTP_303_SEE_OTHER)
    leave_notice(response, notice)
    return response


Act = Callable[["AsyncConnection"], Awaitable[Notice]]


def operator_actor(request: Request) -> audit.Actor:
    """Who acts: the signed-in key (`operator` put it on the request), from this request."""
    return actor(request, request.state.client)


async def _one(request: Request, job_id: UUID, act: Act, action: audit.Action) -> RedirectResponse:
    fields = await form_fields(request)
    default = f"/dashboard/jobs/{job_id}"
    try:
        async with transaction() as conn:
            notice = await act(conn)
            detail = {"running": True} if notice.kind == "cancelling" else None
            await audit.record(conn, operator_actor(request), action, target=str(job_id), detail=detail)
    except InvalidTransition as error:
        notice = Notice("refused", state=error.state)
    except JobNotFound:
        notice = Notice("refused")
    return back(request, fields, default, notice)


@router.post("/jobs/{job_id}/replay")
async def replay(request: Request, job_id: UUID) -> RedirectResponse:
    async def act(conn: AsyncConnection) -> Notice:
        await actions.replay(conn, job_id)
        return Notice("replayed", 1)

    return await _one(request, job_id, act, audit.Action.JOB_REPLAY)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: UUID) -> RedirectResponse:
    async def act(conn: AsyncConnection) -> Notice:
        outcome = await actions.cancel(conn, job_id)
        return Notice("cancelled" if outcome == "cancelled" else "cancelling", 1)

    return await _one(request, job_id, act, audit.Action.JOB_CANCEL)


@router.post("/jobs/{job_id}/discard")
async def discard(request: Request, job_id: UUID) -> RedirectResponse:
    async def act(conn: AsyncConnection) -> Notice:
        await actions.discard(conn, job_id)
        return Notice("discarded", 1)

    return await _one(request, job_id, act, audit.Action.JOB_DISCARD)


@router.post("/workflows/{workflow_id}/cancel")
async def cancel_workflow(request: Request, workflow_id: UUID) -> RedirectResponse:
    fields = await form_fields(request)
    try:
        async with transaction() as conn:
            done = await actions.cancel_workflow(conn, workflow_id, operator_actor(request))
        notice = Notice("workflow_cancelled", done.cancelled + done.requested)
    except (WorkflowEnded, WorkflowNotFound):
        notice = Notice("workflow_ended")
    return back(request, fields, f"/dashboard/workflows/{workflow_id}", notice)


@router.post("/dead/bulk")
async def bulk(request: Request) -> RedirectResponse:
    fields = await form_fields(request)
    action = next((known for known in BULK_DONE if known == fields.get("action")), None)
    if action is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "action must be replay or discard")
    if fields.get("confirm") != "yes":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "a bulk action needs confirm=yes")
    task = fields.get("task") or None
    done = await actions.bulk(
        async_engine(), action, task=task, up_to=BULK_MAX, actor=operator_actor(request)
    )
    return back(request, fields, "/dashboard/dead", Notice(BULK_DONE[action], len(done)))


ScheduleName = Annotated[str, Path(min_length=1, max_length=200, pattern=NAME_PATTERN)]


async def _schedule(
    request: Request,
    name: str,
    act: Callable[[AsyncConnection, str], Awaitable[None]],
    done: str,
    action: audit.Action,
) -> RedirectResponse:
    fields = await form_fields(request)
    try:
        async with transaction() as conn:
            await act(conn, name)
            await audit.record(conn, operator_actor(request), action, target=name)
        notice = Notice(done, 1)
    except ScheduleNotFound:
        notice = Notice("no_schedule")
    return back(request, fields, "/dashboard/schedules", notice)


@router.post("/schedules/{name}/pause")
async def pause_schedule(request: Request, name: ScheduleName) -> RedirectResponse:
    return await _schedule(request, name, scheduling.pause, "paused", audit.Action.SCHEDULE_PAUSE)


@router.post("/schedules/{name}/resume")
async def resume_schedule(request: Request, name: ScheduleName) -> RedirectResponse:
    return await _schedule(request, name, scheduling.resume, "resumed", audit.Action.SCHEDULE_RESUME)


QueueName = Annotated[str, Path(min_length=1, max_length=200)]


async def _queue(request: Request, queue: str, pause: bool) -> RedirectResponse:
    fields = await form_fields(request)
    action = audit.Action.QUEUE_PAUSE if pause else audit.Action.QUEUE_RESUME
    try:
        async with transaction() as conn:
            await (queueing.pause if pause else queueing.resume)(conn, queue)
            await audit.record(conn, operator_actor(request), action, target=queue)
        notice = Notice("queue_paused" if pause else "queue_resumed", 1)
    except QueueNotFound:
        notice = Notice("no_queue")
    return back(request, fields, "/dashboard", notice)


@router.post("/queues/{queue}/pause")
async def pause_queue(request: Request, queue: QueueName) -> RedirectResponse:
    return await _queue(request, queue, pause=True)


@router.post("/queues/{queue}/resume")
async def resume_queue(request: Request, queue: QueueName) -> RedirectResponse:
    return await _queue(request, queue, pause=False)
