"""The job ledger: every state change of a job is one statement here.

Each statement is built once and run by the API (async) or by the worker, relay and CLI
(sync). Every write a worker makes is fenced by the job's (run, attempt) token: a worker
that lost its lease can no longer change the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, TextClause, text

from app.db.schema import NOTIFY_CHANNEL


@dataclass(frozen=True, slots=True)
class Token:
    """Names one attempt of one run of a job; the fencing token of worker writes."""

    job_id: UUID
    run: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Claim:
    token: Token
    task: str
    max_attempts: int


@dataclass(frozen=True, slots=True)
class Publishable:
    id: UUID
    task: str
    queue: str
    payload: dict[str, Any]
    priority: int
    run: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Reaped:
    id: UUID
    task: str
    queue: str
    payload: dict[str, Any]
    state: str
    run: int
    attempts: int


INSERT_JOB: TextClause = text(
    f"""
    WITH ins AS (
        INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts,
                          available_at, idempotency_key, request_hash)
        VALUES (:id, :task, :queue, CAST(:payload AS jsonb), 'queued', :priority, :max_attempts,
                now() + make_interval(secs => :delay), :idempotency_key, :request_hash)
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT ins.id, pg_notify('{NOTIFY_CHANNEL}', '') FROM ins
    """
)

FIND_BY_IDEMPOTENCY_KEY: TextClause = text(
    "SELECT id, task, state, request_hash FROM jobs WHERE idempotency_key = :key"
)

CLAIM: TextClause = text(
    """
    WITH claimed AS (
        UPDATE jobs SET state = 'running', attempts = attempts + 1,
               started_at = CASE WHEN attempts = 0 THEN now() ELSE started_at END,
               lease_expires_at = now() + make_interval(secs => :lease),
               worker_id = :worker_id, updated_at = now()
        WHERE id = :id AND state IN ('queued', 'retrying') AND available_at <= now()
          AND attempts < max_attempts
        RETURNING id, run, attempts, max_attempts, task
    ), history AS (
        INSERT INTO job_attempts (job_id, run, attempt, worker_id)
        SELECT id, run, attempts, :worker_id FROM claimed
    )
    SELECT id, run, attempts, max_attempts, task FROM claimed
    """
)

_CLOSE_ATTEMPT = """
    , closed AS (
        UPDATE job_attempts a SET finished_at = now(), outcome = :outcome, error = :error,
               duration_seconds = extract(epoch FROM now() - a.started_at)
        FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
        RETURNING a.job_id
    )
"""

_FENCE = "id = :id AND run = :run AND attempts = :attempt AND state = 'running'"

SUCCEED: TextClause = text(
    f"""
    WITH done AS (
        UPDATE jobs SET state = 'succeeded', result = CAST(:result AS jsonb), progress = 100,
               finished_at = now(), lease_expires_at = NULL, last_error = NULL, updated_at = now()
        WHERE {_FENCE}
        RETURNING id, run, attempts
    )
    {_CLOSE_ATTEMPT}
    SELECT done.id FROM done
    """
)

RETRY: TextClause = text(
    f"""
    WITH done AS (
        UPDATE jobs SET state = 'retrying', last_error = :error, lease_expires_at = NULL,
               available_at = now() + make_interval(secs => :delay), published_at = NULL,
               updated_at = now()
        WHERE {_FENCE}
        RETURNING id, run, attempts
    )
    {_CLOSE_ATTEMPT}
    SELECT done.id, pg_notify('{NOTIFY_CHANNEL}', '') FROM done
    """
)

BURY: TextClause = text(
    f"""
    WITH done AS (
        UPDATE jobs SET state = 'dead', last_error = :error, lease_expires_at = NULL,
               finished_at = now(), updated_at = now()
        WHERE {_FENCE}
        RETURNING id, run, attempts
    )
    {_CLOSE_ATTEMPT}
    SELECT done.id FROM done
    """
)

PROGRESS: TextClause = text(
    f"""
    UPDATE jobs SET progress = :progress, lease_expires_at = now() + make_interval(secs => :lease)
    WHERE {_FENCE}
    """
)

RENEW_LEASES: TextClause = text(
    """
    UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease)
    WHERE id = ANY(:ids) AND state = 'running' AND worker_id = :worker_id
    """
)

PUBLISHABLE: TextClause = text(
    """
    SELECT id, task, queue, payload, priority, run, attempts FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND available_at <= now()
    ORDER BY available_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

MARK_PUBLISHED: TextClause = text("UPDATE jobs SET published_at = now() WHERE id = ANY(:ids)")

NEXT_DUE: TextClause = text(
    """
    SELECT extract(epoch FROM min(available_at) - now()) FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying')
    """
)

REAP_EXPIRED_LEASES: TextClause = text(
    """
    WITH expired AS (
        SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE jobs j SET
            state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'retrying' END,
            finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
            published_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
            available_at = now(), lease_expires_at = NULL, updated_at = now(),
            last_error = 'lease expired: worker ' || coalesce(j.worker_id, '?')
                         || ' stopped renewing it (crashed or stalled)'
        FROM expired WHERE j.id = expired.id
        RETURNING j.id, j.task, j.queue, j.payload, j.state, j.run, j.attempts, j.last_error
    ), history AS (
        UPDATE job_attempts a SET finished_at = now(), outcome = 'lost', error = upd.last_error,
               duration_seconds = extract(epoch FROM now() - a.started_at)
        FROM upd WHERE a.job_id = upd.id AND a.run = upd.run AND a.attempt = upd.attempts
          AND a.finished_at IS NULL
    )
    SELECT id, task, queue, payload, state, run, attempts FROM upd
    """
)

CANCEL: TextClause = text(
    """
    UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now()
    WHERE id = :id AND state IN ('queued', 'retrying')
    RETURNING id
    """
)

JOB_STATE: TextClause = text("SELECT state FROM jobs WHERE id = :id")


def claim(conn: Connection, job_id: UUID, worker_id: str, lease_seconds: float) -> Claim | None:
    row = conn.execute(CLAIM, {"id": job_id, "worker_id": worker_id, "lease": lease_seconds}).first()
    if row is None:
        return None
    return Claim(Token(row.id, row.run, row.attempts), row.task, row.max_attempts)


def _fence(token: Token) -> dict[str, Any]:
    return {"id": token.job_id, "run": token.run, "attempt": token.attempt}


def succeed(conn: Connection, token: Token, result_json: str) -> bool:
    params = _fence(token) | {"result": result_json, "outcome": "succeeded", "error": None}
    return conn.execute(SUCCEED, params).first() is not None


def retry(conn: Connection, token: Token, error: str, delay_seconds: float) -> bool:
    params = _fence(token) | {"error": error, "delay": delay_seconds, "outcome": "retrying"}
    return conn.execute(RETRY, params).first() is not None


def bury(conn: Connection, token: Token, error: str) -> bool:
    params = _fence(token) | {"error": error, "outcome": "dead"}
    return conn.execute(BURY, params).first() is not None


def report_progress(conn: Connection, token: Token, progress: int, lease_seconds: float) -> bool:
    params = _fence(token) | {"progress": progress, "lease": lease_seconds}
    return conn.execute(PROGRESS, params).rowcount == 1


def renew_leases(conn: Connection, worker_id: str, job_ids: list[UUID], lease: float) -> int:
    if not job_ids:
        return 0
    params = {"ids": job_ids, "worker_id": worker_id, "lease": lease}
    return conn.execute(RENEW_LEASES, params).rowcount


def take_publishable(conn: Connection, limit: int) -> list[Publishable]:
    rows = conn.execute(PUBLISHABLE, {"limit": limit}).all()
    return [Publishable(r.id, r.task, r.queue, r.payload, r.priority, r.run, r.attempts) for r in rows]


def mark_published(conn: Connection, ids: list[UUID]) -> None:
    if ids:
        conn.execute(MARK_PUBLISHED, {"ids": ids})


def seconds_until_next_due(conn: Connection) -> float | None:
    value = conn.execute(NEXT_DUE).scalar()
    return None if value is None else float(value)


def reap_expired_leases(conn: Connection, limit: int = 1000) -> list[Reaped]:
    rows = conn.execute(REAP_EXPIRED_LEASES, {"limit": limit}).all()
    return [Reaped(r.id, r.task, r.queue, r.payload, r.state, r.run, r.attempts) for r in rows]


def job_state(conn: Connection, job_id: UUID) -> str | None:
    value = conn.execute(JOB_STATE, {"id": job_id}).scalar()
    return None if value is None else str(value)


def utc_iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


RELEASE: TextClause = text(
    """
    WITH done AS (
        UPDATE jobs SET state = 'retrying', available_at = now(), published_at = NULL,
               lease_expires_at = NULL, updated_at = now(), last_error = :error
        WHERE id = ANY(:ids) AND worker_id = :worker_id AND state = 'running'
        RETURNING id, run, attempts
    ), closed AS (
        UPDATE job_attempts a SET finished_at = now(), outcome = 'interrupted', error = :error,
               duration_seconds = extract(epoch FROM now() - a.started_at)
        FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
    )
    SELECT done.id, pg_notify('conveyor_jobs', '') FROM done
    """
)

UPSERT_WORKER: TextClause = text(
    """
    INSERT INTO workers (id, host, pid, queues, started_at, last_seen, in_flight, processed)
    VALUES (:id, :host, :pid, CAST(:queues AS jsonb), :started_at, now(), :in_flight, :processed)
    ON CONFLICT (id) DO UPDATE SET last_seen = now(), in_flight = EXCLUDED.in_flight,
        processed = EXCLUDED.processed, queues = EXCLUDED.queues, stopped_at = NULL
    """
)

STOP_WORKER: TextClause = text("UPDATE workers SET stopped_at = now(), in_flight = 0 WHERE id = :id")


def release(conn: Connection, worker_id: str, job_ids: list[UUID], error: str) -> int:
    """Hand jobs back to the queue at once (a worker shutting down mid-attempt)."""
    if not job_ids:
        return 0
    params = {"ids": job_ids, "worker_id": worker_id, "error": error}
    return len(conn.execute(RELEASE, params).all())


REARM_STALE_PUBLICATIONS: TextClause = text(
    """
    UPDATE jobs SET published_at = NULL
    WHERE state IN ('queued', 'retrying') AND published_at < now() - make_interval(secs => :age)
    """
)


def rearm_stale_publications(conn: Connection, age_seconds: float) -> int:
    """Publish again jobs whose message was published long ago but never claimed."""
    return conn.execute(REARM_STALE_PUBLICATIONS, {"age": age_seconds}).rowcount
