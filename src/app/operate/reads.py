"""Reading jobs from the ledger, for the API, the dashboard and the CLI: one job, its history, pages."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, Select, and_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import JobNotFound
from app.ledger.artifact_schema import job_artifact_chunks
from app.ledger.schema import job_artifacts, job_attempts, jobs

JOB_COLUMNS = [
    jobs.c.id,
    jobs.c.task,
    jobs.c.queue,
    jobs.c.state,
    jobs.c.priority,
    jobs.c.run,
    jobs.c.attempts,
    jobs.c.max_attempts,
    jobs.c.progress,
    jobs.c.payload,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.available_at,
    jobs.c.started_at,
    jobs.c.finished_at,
    jobs.c.last_error,
    jobs.c.result,
    jobs.c.worker_id,
    jobs.c.lease_expires_at,
    jobs.c.client_id,
    jobs.c.parent_id,
    jobs.c.schedule,
    jobs.c.scheduled_for,
    jobs.c.cancel_requested_at,
    jobs.c.unique_key,
    jobs.c.workflow_id,
    jobs.c.step,
]
# A reader limited to the jobs one client (API key) created passes its key id as `client_id`;
# another client's job is then not found, never forbidden: its existence is not revealed.
ANY_CLIENT = None


async def get(conn: AsyncConnection, job_id: UUID, client_id: str | None = ANY_CLIENT) -> Row[Any]:
    query = select(*JOB_COLUMNS).where(jobs.c.id == job_id)
    if client_id is not None:
        query = query.where(jobs.c.client_id == client_id)
    row = (await conn.execute(query)).first()
    if row is None:
        raise JobNotFound(job_id)
    return row


async def attempts_of(conn: AsyncConnection, job_id: UUID) -> list[Row[Any]]:
    query = (
        select(job_attempts)
        .where(job_attempts.c.job_id == job_id)
        .order_by(job_attempts.c.run, job_attempts.c.attempt)
    )
    return list((await conn.execute(query)).all())


def encode_cursor(created_at: datetime, job_id: UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """Raises ValueError for a cursor this API did not hand out."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, _, job_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
    return datetime.fromisoformat(created), UUID(job_id)


def page_query(
    *,
    state: str | None = None,
    task: str | None = None,
    schedule: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    client_id: str | None = ANY_CLIENT,
) -> Select[Any]:
    """One page of jobs newest first, one more row than `limit` (is there a next page?)."""
    conditions = []
    if client_id is not None:
        conditions.append(jobs.c.client_id == client_id)
    if state is not None:
        conditions.append(jobs.c.state == state)
    if task is not None:
        conditions.append(jobs.c.task == task)
    if schedule is not None:
        conditions.append(jobs.c.schedule == schedule)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        conditions.append(tuple_(jobs.c.created_at, jobs.c.id) < tuple_(created_at, job_id))
    return (
        select(*JOB_COLUMNS)
        .where(and_(True, *conditions))
        .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        .limit(limit + 1)
    )


async def page(
    conn: AsyncConnection,
    *,
    state: str | None = None,
    task: str | None = None,
    schedule: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    client_id: str | None = ANY_CLIENT,
) -> tuple[list[Row[Any]], str | None]:
    """Jobs newest first; keyset paging, so every page costs the same with any ledger size."""
    query = page_query(
        state=state, task=task, schedule=schedule, limit=limit, cursor=cursor, client_id=client_id
    )
    rows = list((await conn.execute(query)).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


async def children(conn: AsyncConnection, job_id: UUID, limit: int = 50) -> list[Row[Any]]:
    """The jobs this job's runs made, oldest first (an index on parent_id)."""
    query = select(*JOB_COLUMNS).where(jobs.c.parent_id == job_id).order_by(jobs.c.created_at).limit(limit)
    return list((await conn.execute(query)).all())


async def artifact(conn: AsyncConnection, job_id: UUID) -> Row[Any] | None:
    """A job's file: name, content_type, size, and content (NULL when it is kept in pieces)."""
    query = select(job_artifacts).where(job_artifacts.c.job_id == job_id)
    return (await conn.execute(query)).first()


async def artifact_pieces(
    conn: AsyncConnection, job_id: UUID, after: int, limit: int
) -> list[tuple[int, bytes]]:
    """Up to `limit` pieces of a job's file after piece `after` (-1: from the start), in order."""
    query = (
        select(job_artifact_chunks.c.seq, job_artifact_chunks.c.content)
        .where(job_artifact_chunks.c.job_id == job_id, job_artifact_chunks.c.seq > after)
        .order_by(job_artifact_chunks.c.seq)
        .limit(limit)
    )
    return [(row.seq, row.content) for row in await conn.execute(query)]


async def now(conn: AsyncConnection) -> datetime:
    value: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
    return value
