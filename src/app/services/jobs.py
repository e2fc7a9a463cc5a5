"""Accepting, reading and steering jobs, for the async API."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Row, and_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app import ledger
from app.db.schema import NOTIFY_CHANNEL, JobState, job_artifacts, job_attempts, jobs
from app.errors import IdempotencyConflict, InvalidTransition, JobNotFound

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
]


@dataclass(frozen=True, slots=True)
class Accepted:
    id: UUID
    task: str
    state: str
    duplicate: bool


def request_fingerprint(route: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps([route, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


async def accept(
    conn: AsyncConnection,
    *,
    task: str,
    queue: str,
    payload: dict[str, Any],
    max_attempts: int,
    delay_seconds: float = 0,
    priority: int = 0,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> Accepted:
    """Store one job (and its idempotency key) in one statement; the relay publishes it."""
    params = {
        "id": uuid.uuid4(),
        "task": task,
        "queue": queue,
        "payload": orjson.dumps(payload).decode(),
        "priority": priority,
        "max_attempts": max_attempts,
        "delay": float(delay_seconds),
        "idempotency_key": idempotency_key,
        "request_hash": fingerprint if idempotency_key else None,
    }
    row = (await conn.execute(ledger.INSERT_JOB, params)).first()
    if row is not None:
        return Accepted(row.id, task, JobState.QUEUED, duplicate=False)
    first = (await conn.execute(ledger.FIND_BY_IDEMPOTENCY_KEY, {"key": idempotency_key})).first()
    if first is None:  # the first request's transaction rolled back after we waited on it
        return await accept(
            conn,
            task=task,
            queue=queue,
            payload=payload,
            max_attempts=max_attempts,
            delay_seconds=delay_seconds,
            priority=priority,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
    if first.request_hash != fingerprint:
        raise IdempotencyConflict(idempotency_key or "")
    return Accepted(first.id, first.task, first.state, duplicate=True)


async def get(conn: AsyncConnection, job_id: UUID) -> Row[Any]:
    row = (await conn.execute(select(*JOB_COLUMNS).where(jobs.c.id == job_id))).first()
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


async def page(
    conn: AsyncConnection,
    *,
    state: str | None = None,
    task: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Row[Any]], str | None]:
    """Jobs newest first; keyset paging, so every page costs the same with any ledger size."""
    conditions = []
    if state is not None:
        conditions.append(jobs.c.state == state)
    if task is not None:
        conditions.append(jobs.c.task == task)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        conditions.append(tuple_(jobs.c.created_at, jobs.c.id) < tuple_(created_at, job_id))
    query = (
        select(*JOB_COLUMNS)
        .where(and_(True, *conditions))
        .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        .limit(limit + 1)
    )
    rows = list((await conn.execute(query)).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


async def replay(conn: AsyncConnection, job_id: UUID) -> None:
    if not await replay_dead(conn, ids=[job_id], limit=1):
        state = await _state_of(conn, job_id)
        raise InvalidTransition(job_id, state, "replay", "dead")


async def cancel(conn: AsyncConnection, job_id: UUID) -> None:
    if (await conn.execute(ledger.CANCEL, {"id": job_id})).first() is None:
        state = await _state_of(conn, job_id)
        raise InvalidTransition(job_id, state, "cancel", "queued or retrying")


async def _state_of(conn: AsyncConnection, job_id: UUID) -> str:
    state = (await conn.execute(ledger.JOB_STATE, {"id": job_id})).scalar()
    if state is None:
        raise JobNotFound(job_id)
    return str(state)


async def artifact(conn: AsyncConnection, job_id: UUID) -> Row[Any] | None:
    query = select(job_artifacts).where(job_artifacts.c.job_id == job_id)
    return (await conn.execute(query)).first()


async def now(conn: AsyncConnection) -> datetime:
    value: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
    return value


REPLAY_DEAD = text(
    f"""
    WITH r AS (
        UPDATE jobs SET state = 'queued', run = run + 1, attempts = 0, progress = 0,
               available_at = now(), published_at = NULL, started_at = NULL, finished_at = NULL,
               last_error = NULL, result = NULL, worker_id = NULL, updated_at = now()
        WHERE id IN (
            SELECT id FROM jobs WHERE state = 'dead'
              AND (CAST(:task AS text) IS NULL OR task = :task)
              AND (CAST(:ids AS uuid[]) IS NULL OR id = ANY(:ids))
            ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED
        )
        RETURNING id
    )
    SELECT r.id, pg_notify('{NOTIFY_CHANNEL}', '') FROM r
    """
)

DISCARD_DEAD = text(
    """
    DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs WHERE state = 'dead'
          AND (CAST(:task AS text) IS NULL OR task = :task)
          AND (CAST(:ids AS uuid[]) IS NULL OR id = ANY(:ids))
        ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    RETURNING id
    """
)


async def replay_dead(
    conn: AsyncConnection, *, task: str | None = None, ids: list[UUID] | None = None, limit: int = 1000
) -> list[UUID]:
    """Replay up to `limit` dead jobs (all, one task's, or the given ids); their ids."""
    params = {"task": task, "ids": ids, "limit": limit}
    return [row.id for row in (await conn.execute(REPLAY_DEAD, params)).all()]


async def discard_dead(
    conn: AsyncConnection, *, task: str | None = None, ids: list[UUID] | None = None, limit: int = 1000
) -> list[UUID]:
    """Delete up to `limit` dead jobs and their history from the ledger; their ids."""
    params = {"task": task, "ids": ids, "limit": limit}
    return [row.id for row in (await conn.execute(DISCARD_DEAD, params)).all()]
