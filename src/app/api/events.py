"""Following jobs over HTTP: `GET /api/v1/events` (Server-Sent Events) and the wait of
`GET /api/v1/jobs/{id}?wait_seconds=N`, both fed by the process's one event pump."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from app.access.keys import Client, Scope
from app.api.auth import authenticate
from app.api.deps import reading
from app.api.responses import AUTH, INVALID, UNAVAILABLE, responses
from app.errors import CursorExpired, InvalidCursor, LedgerUnavailable
from app.follow.pump import EventPump
from app.follow.stream import follow
from app.ledger import events
from app.ledger.engines import api_connect_args
from app.ledger.events import Cursor, EventFilter
from app.ledger.schema import TERMINAL_STATES
from app.ledger.urls import own_conninfo
from app.operate import reads
from app.operate.views import JobView, job_view, job_view_data
from app.settings import get_settings

router = APIRouter(prefix="/api/v1", tags=["events"])
READERS = (Scope.READ, Scope.ENQUEUE)
_pump_lock = asyncio.Lock()


def job_views(row: Mapping[str, Any]) -> dict[str, Any]:
    """The view an event carries of its job, from the job's row read with the events."""
    return job_view_data(row)


async def event_pump(app: FastAPI) -> EventPump:
    """The process's pump, started at first use; a 503 while the ledger cannot be reached."""
    pump: EventPump | None = getattr(app.state, "event_pump", None)
    if pump is None:
        async with _pump_lock:
            pump = getattr(app.state, "event_pump", None)
            if pump is None:
                pump = EventPump(own_conninfo(), job_views, api_connect_args())
                app.state.event_pump = pump
    try:
        await pump.start(within=get_settings().db_timeout_seconds)
    except TimeoutError:
        raise LedgerUnavailable("the event log cannot be read now") from None
    return pump


async def close_event_pump(app: FastAPI) -> None:
    pump: EventPump | None = getattr(app.state, "event_pump", None)
    if pump is not None:
        await pump.close()


@asynccontextmanager
async def _log_reader() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection of a stream's own for its catch-up: each read its own transaction."""
    options: dict[str, Any] = api_connect_args()
    try:
        conn = await psycopg.AsyncConnection.connect(own_conninfo(), autocommit=True, **options)
    except psycopg.OperationalError as error:
        raise LedgerUnavailable(str(error)) from error
    async with conn:
        yield conn


def _cursor(text: str | None, where: str) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.parse(text)
    except InvalidCursor as error:
        loc = ("header", "Last-Event-ID") if where == "header" else ("query", "after")
        raise RequestValidationError([{"loc": loc, "msg": str(error), "type": "value_error"}]) from None


def _visible(client: Client, where: EventFilter) -> EventFilter:
    if client.reads_everything:
        return where
    return EventFilter(where.task, where.job_id, where.workflow_id, client.key_id)


@router.get(
    "/events",
    operation_id="follow_events",
    summary="Job events as Server-Sent Events, resumable with Last-Event-ID",
    response_class=StreamingResponse,
    responses=responses(
        {200: {"content": {"text/event-stream": {}}, "description": "The stream"}},
        {410: {"description": "The cursor's event is older than EVENT_RETENTION_SECONDS"}},
        INVALID,
        AUTH,
        UNAVAILABLE,
    ),
)
async def stream_events(
    request: Request,
    task: Annotated[str | None, Query(max_length=200)] = None,
    job: UUID | None = None,
    workflow: UUID | None = None,
    after: Annotated[
        str | None,
        Query(
            max_length=64,
            description="For clients that cannot set Last-Event-ID; `0-0`: from the oldest event kept",
        ),
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    client = await authenticate(request, *READERS)
    cursor = _cursor(last_event_id, "header") or _cursor(after, "query")
    where = _visible(client, EventFilter(task=task, job_id=job, workflow_id=workflow))
    pump = await event_pump(request.app)
    if cursor is not None:
        async with _log_reader() as conn:
            if not await events.exists(conn, cursor):
                raise CursorExpired(str(cursor))
    body = follow(pump, where, cursor, connect=_log_reader, views=job_views)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


async def wait_until_finished(request: Request, job_id: UUID, own: str | None, seconds: float) -> JobView:
    """The job once it is terminal or `seconds` have passed. Interest is registered before the
    job is read, so a change between the read and the wait is not missed; no connection is held
    while waiting, and the job's view comes with its terminal event (read once by the pump for
    every waiter), so a thousand waiters on one job do not all read it again."""
    pump = await event_pump(request.app)
    subscription = pump.subscribe(EventFilter(job_id=job_id, client_id=own), views=True)
    deadline = time.monotonic() + seconds
    try:
        async with reading() as conn:
            row = await reads.get(conn, job_id, own)
        if row.state in TERMINAL_STATES:
            return job_view(row)
        while (left := deadline - time.monotonic()) > 0:
            batch = await subscription.take(left)
            finished = [d for d in batch if d.event.state in TERMINAL_STATES and d.job is not None]
            if finished and finished[-1].job is not None:
                return JobView.model_validate(finished[-1].job)
            if subscription.overflowed:
                break
    finally:
        pump.unsubscribe(subscription)
    async with reading() as conn:
        return job_view(await reads.get(conn, job_id, own))
