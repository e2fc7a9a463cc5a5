"""The schedule routes (v1): create, list, read, pause, resume, delete.

A schedule is validated whole before any connection opens (its task, its payload against the
task's model, its timing): the relay later inserts the payload it holds as it is.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.accept import schedules as accepting
from app.access.keys import Client, Scope
from app.api.audit import actor
from app.api.auth import authenticate
from app.api.deps import reading, transaction
from app.api.errors import field_errors, unstorable
from app.api.jobs import QueryText
from app.api.responses import (
    AUTH,
    INVALID,
    NO_SCHEDULE,
    SCHEDULE_BODY,
    SCHEDULE_CONFLICT,
    UNAVAILABLE,
    responses,
)
from app.api.schemas import ScheduleList, ScheduleRequest
from app.errors import UnknownTask, UnstorableInput
from app.jobs.registry import get_task, public_tasks
from app.jobs.schedules import NAME_PATTERN, timing
from app.operate import audit
from app.operate import schedules as operating
from app.operate.schedules import ScheduleView, schedule_view

router = APIRouter(prefix="/api/v1", tags=["schedules"])

ScheduleName = Annotated[str, Path(min_length=1, max_length=200, pattern=NAME_PATTERN)]
ONE_SCHEDULE = responses(NO_SCHEDULE, INVALID, AUTH, UNAVAILABLE)
# Schedules are the operators' (`operate`); `read` may look at them too, as at every GET.
# Each route checks its key first thing in its body, after FastAPI validated the input.
LOOKERS = (Scope.READ, Scope.OPERATE)
LOC_PAYLOAD = ("body", "payload")


def _draft(body: ScheduleRequest) -> accepting.Draft:
    spec = get_task(body.task)
    if spec is None or not spec.public:
        raise UnknownTask(body.task, [t.name for t in public_tasks()])
    try:
        return accepting.draft(
            body.name, spec, body.payload, timing(body.cron, body.every_seconds, body.timezone)
        )
    except ValidationError as error:
        raise RequestValidationError(field_errors(error.errors(), LOC_PAYLOAD)) from None
    except UnstorableInput as error:
        raise unstorable(error, LOC_PAYLOAD) from None


async def _record(
    conn: AsyncConnection, request: Request, client: Client, action: audit.Action, name: str
) -> None:
    await audit.record(conn, actor(request, client), action, target=name)


@router.post(
    "/schedules",
    status_code=status.HTTP_201_CREATED,
    response_model=ScheduleView,
    responses=responses(SCHEDULE_BODY, SCHEDULE_CONFLICT, AUTH, UNAVAILABLE),
    summary="Fire a task on a cron expression or every N seconds",
    operation_id="create_schedule",
)
async def create_schedule(body: ScheduleRequest, request: Request, response: Response) -> ScheduleView:
    client = await authenticate(request, Scope.OPERATE)
    draft = _draft(body)
    async with transaction() as conn:
        stored = await accepting.store(conn, draft)
        await audit.record_schedule_created(conn, actor(request, client), stored)
        row = await operating.get(conn, draft.name)
    response.headers["Location"] = f"/api/v1/schedules/{draft.name}"
    return schedule_view(row)


@router.get(
    "/schedules",
    response_model=ScheduleList,
    responses=responses(INVALID, AUTH, UNAVAILABLE),
    operation_id="list_schedules",
)
async def list_schedules(
    request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: QueryText = None
) -> ScheduleList:
    await authenticate(request, *LOOKERS)
    cursor = cursor or None
    try:
        if cursor is not None:
            operating.decode_cursor(cursor)
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("query", "cursor"), "msg": "invalid cursor", "type": "value_error"}]
        ) from None
    async with reading() as conn:
        rows, next_cursor = await operating.page(conn, limit=limit, cursor=cursor)
    return ScheduleList(items=[schedule_view(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/schedules/{name}", response_model=ScheduleView, responses=ONE_SCHEDULE, operation_id="get_schedule"
)
async def get_schedule(name: ScheduleName, request: Request) -> ScheduleView:
    await authenticate(request, *LOOKERS)
    async with reading() as conn:
        return schedule_view(await operating.get(conn, name))


@router.delete(
    "/schedules/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=ONE_SCHEDULE,
    summary="Stop a schedule for good (the jobs it made stay)",
    operation_id="delete_schedule",
)
async def delete_schedule(name: ScheduleName, request: Request) -> Response:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await operating.delete(conn, name)
        await _record(conn, request, client, audit.Action.SCHEDULE_DELETE, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/schedules/{name}/pause",
    response_model=ScheduleView,
    responses=ONE_SCHEDULE,
    operation_id="pause_schedule",
)
async def pause_schedule(name: ScheduleName, request: Request) -> ScheduleView:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await operating.pause(conn, name)
        await _record(conn, request, client, audit.Action.SCHEDULE_PAUSE, name)
        return schedule_view(await operating.get(conn, name))


@router.post(
    "/schedules/{name}/resume",
    response_model=ScheduleView,
    responses=ONE_SCHEDULE,
    summary="Fire again from the next tick (ticks missed while paused never fire)",
    operation_id="resume_schedule",
)
async def resume_schedule(name: ScheduleName, request: Request) -> ScheduleView:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await operating.resume(conn, name)
        await _record(conn, request, client, audit.Action.SCHEDULE_RESUME, name)
        return schedule_view(await operating.get(conn, name))
