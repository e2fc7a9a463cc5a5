"""Queues as operators see and steer them: each with its paused state, depth, running jobs and
oldest waiting job; pause and resume. Written once for the API, the dashboard and the CLI."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import QueueNotFound
from app.jobs.registry import Queue
from app.ledger import flow

# Each queue's waiting and running jobs, from the (state, created_at) index: the ledger's
# unfinished jobs, whatever it holds besides.
OVERVIEW = text(
    """
    SELECT q.queue, p.queue IS NOT NULL AS paused, coalesce(s.depth, 0) AS depth,
           coalesce(s.running, 0) AS running, s.oldest_waiting_at
    FROM unnest(CAST(:queues AS text[])) AS q(queue)
    LEFT JOIN paused_queues p ON p.queue = q.queue
    LEFT JOIN (
        SELECT queue, count(*) FILTER (WHERE state IN ('queued', 'retrying')) AS depth,
               count(*) FILTER (WHERE state = 'running') AS running,
               min(created_at) FILTER (WHERE state IN ('queued', 'retrying')) AS oldest_waiting_at
        FROM jobs WHERE state IN ('queued', 'retrying', 'running')
        GROUP BY queue
    ) s ON s.queue = q.queue
    ORDER BY q.queue
    """
)

PAUSED = text("SELECT queue FROM paused_queues")

# Jobs of tasks with limits that wait unpublished: over their limit, or about to be published.
WAITING_ON_LIMIT = text(
    """
    SELECT task, count(*) FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying')
      AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL)
    GROUP BY task
    """
)


class QueueView(BaseModel):
    name: str
    paused: bool
    depth: int  # queued or retrying
    running: int
    oldest_waiting_at: datetime | None


def names() -> list[str]:
    return sorted(q.value for q in Queue)


def checked(queue: str) -> str:
    """The queue's name; QueueNotFound for a name Conveyor does not declare."""
    if queue not in names():
        raise QueueNotFound(queue)
    return queue


def _views(rows: object) -> list[QueueView]:
    return [
        QueueView(
            name=r.queue,
            paused=r.paused,
            depth=r.depth,
            running=r.running,
            oldest_waiting_at=r.oldest_waiting_at,
        )
        for r in rows  # type: ignore[attr-defined]
    ]


async def overview(conn: AsyncConnection) -> list[QueueView]:
    return _views(await conn.execute(OVERVIEW, {"queues": names()}))


def overview_sync(conn: Connection) -> list[QueueView]:
    return _views(conn.execute(OVERVIEW, {"queues": names()}))


async def one(conn: AsyncConnection, queue: str) -> QueueView:
    return next(view for view in await overview(conn) if view.name == queue)


async def pause(conn: AsyncConnection, queue: str) -> None:
    """Start nothing new from `queue` (running jobs finish; accepting into it goes on)."""
    await flow.pause_queue(conn, checked(queue))


async def resume(conn: AsyncConnection, queue: str) -> None:
    """Start `queue`'s jobs again: the relay publishes what it held back."""
    await flow.resume_queue(conn, checked(queue))


def pause_sync(conn: Connection, queue: str) -> None:
    flow.pause_queue_sync(conn, checked(queue))


def resume_sync(conn: Connection, queue: str) -> None:
    flow.resume_queue_sync(conn, checked(queue))
