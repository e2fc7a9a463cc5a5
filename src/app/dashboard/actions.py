"""What an operator can do from the dashboard: replay, cancel and discard, one job or in bulk.

Actions are plain HTML form posts that answer with a redirect (303) to the page they came
from, so they work without JavaScript; htmx only makes them smoother. Every action first
passes the same-origin check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse

from app import deadletters
from app.api.deps import TxDep
from app.dashboard.rendering import Notice, leave_notice, safe_next
from app.dashboard.security import require_same_origin
from app.dashboard.throughput import minute_counts
from app.db.engine import async_engine
from app.errors import InvalidTransition, JobNotFound
from app.registry import all_tasks, get_task
from app.services import jobs as service
from app.settings import get_settings

router = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(require_same_origin)])

# Bulk actions work in batches, one transaction each, so no lock is held for long and a
# huge dead-letter queue never makes one giant transaction.
BULK_BATCH = 1000
BULK_MAX = 100_000

Bulk = Callable[..., Awaitable[list[UUID]]]
BULK_ACTIONS: dict[str, tuple[Bulk, str]] = {
    "replay": (service.replay_dead, "replayed"),
    "discard": (service.discard_dead, "discarded"),
}


def forget_dead_letter(background: BackgroundTasks, queue: str, job_id: UUID) -> None:
    """After the commit and the redirect, take the job's copy out of <queue>.XQ."""
    background.add_task(deadletters.remove_quietly, get_settings().broker_url, queue, [job_id])


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form (the only kind the dashboard sends)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if body and media != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "expected a urlencoded form")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def back(request: Request, fields: dict[str, str], default: str, notice: Notice) -> RedirectResponse:
    if notice.kind in {"replayed", "discarded"} and notice.count:
        # Those jobs no longer finished when the cached chart says they did.
        minute_counts(request.app).forget()
    response = RedirectResponse(safe_next(fields.get("next"), default), status.HTTP_303_SEE_OTHER)
    leave_notice(response, notice)
    return response


async def _one(request: Request, job_id: UUID, act: Callable[[], Awaitable[Notice]]) -> RedirectResponse:
    fields = await form_fields(request)
    default = f"/dashboard/jobs/{job_id}"
    try:
        notice = await act()
    except InvalidTransition as error:
        notice = Notice("refused", state=error.state)
    except JobNotFound:
        notice = Notice("refused")
    return back(request, fields, default, notice)


@router.post("/jobs/{job_id}/replay")
async def replay(
    request: Request, job_id: UUID, conn: TxDep, background: BackgroundTasks
) -> RedirectResponse:
    async def act() -> Notice:
        await service.replay(conn, job_id)
        forget_dead_letter(background, (await service.get(conn, job_id)).queue, job_id)
        return Notice("replayed", 1)

    return await _one(request, job_id, act)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: UUID, conn: TxDep) -> RedirectResponse:
    async def act() -> Notice:
        await service.cancel(conn, job_id)
        return Notice("cancelled", 1)

    return await _one(request, job_id, act)


@router.post("/jobs/{job_id}/discard")
async def discard(
    request: Request, job_id: UUID, conn: TxDep, background: BackgroundTasks
) -> RedirectResponse:
    async def act() -> Notice:
        queue = (await service.get(conn, job_id)).queue
        if not await service.discard_dead(conn, ids=[job_id], limit=1):
            state = (await service.get(conn, job_id)).state
            raise InvalidTransition(job_id, state, "discard", "dead")
        forget_dead_letter(background, queue, job_id)
        return Notice("discarded", 1)

    return await _one(request, job_id, act)


@router.post("/dead/bulk")
async def bulk(request: Request, background: BackgroundTasks) -> RedirectResponse:
    fields = await form_fields(request)
    chosen = BULK_ACTIONS.get(fields.get("action", ""))
    if chosen is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "action must be replay or discard")
    if fields.get("confirm") != "yes":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "a bulk action needs confirm=yes")
    act, done = chosen
    task = fields.get("task") or None
    affected: list[UUID] = []
    while len(affected) < BULK_MAX:
        async with async_engine().begin() as conn:
            batch = await act(conn, task=task, limit=min(BULK_BATCH, BULK_MAX - len(affected)))
        affected += batch
        if len(batch) < BULK_BATCH:
            break
    if affected:
        spec = get_task(task) if task else None
        queues = {spec.queue} if spec else {each.queue for each in all_tasks()}
        for queue in sorted(queues):
            background.add_task(deadletters.remove_quietly, get_settings().broker_url, queue, affected)
    return back(request, fields, "/dashboard/dead", Notice(done, len(affected)))
