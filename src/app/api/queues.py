"""The queue routes (v1): list each queue with its paused state and depth; pause, resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from app.access.keys import Scope
from app.api.audit import actor
from app.api.auth import authenticate
from app.api.deps import reading, transaction
from app.api.responses import AUTH, INVALID, NO_QUEUE, UNAVAILABLE, responses
from app.api.schemas import QueueList
from app.operate import audit
from app.operate import queues as operating
from app.operate.queues import QueueView

router = APIRouter(prefix="/api/v1", tags=["queues"])

QueueName = Annotated[str, Path(min_length=1, max_length=200)]
ONE_QUEUE = responses(NO_QUEUE, INVALID, AUTH, UNAVAILABLE)


@router.get(
    "/queues",
    response_model=QueueList,
    responses=responses(AUTH, UNAVAILABLE),
    operation_id="list_queues",
    summary="Each queue: paused or not, jobs waiting (depth), running, the oldest waiting",
)
async def list_queues(request: Request) -> list[QueueView]:
    await authenticate(request, Scope.READ, Scope.OPERATE)
    async with reading() as conn:
        return await operating.overview(conn)


@router.post(
    "/queues/{queue}/pause",
    response_model=QueueView,
    responses=ONE_QUEUE,
    operation_id="pause_queue",
    summary="Start nothing new from the queue (running jobs finish; accepting goes on)",
)
async def pause_queue(queue: QueueName, request: Request) -> QueueView:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await operating.pause(conn, queue)
        await audit.record(conn, actor(request, client), audit.Action.QUEUE_PAUSE, target=queue)
        return await operating.one(conn, queue)


@router.post(
    "/queues/{queue}/resume",
    response_model=QueueView,
    responses=ONE_QUEUE,
    operation_id="resume_queue",
    summary="Start the queue's jobs again, those held while it was paused first",
)
async def resume_queue(queue: QueueName, request: Request) -> QueueView:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await operating.resume(conn, queue)
        await audit.record(conn, actor(request, client), audit.Action.QUEUE_RESUME, target=queue)
        return await operating.one(conn, queue)
