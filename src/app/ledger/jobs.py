"""Every state change of a job, as functions over the statements of `queries.sql`.

Each function runs one statement in the caller's transaction (psycopg or SQLAlchemy connection,
see `connections`). Worker writes carry a `Token`, the job's (run, attempt): a worker that lost
its lease can no longer change the row, and the function says so by returning False.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async
from app.ledger.limits import Flow


@dataclass(frozen=True, slots=True)
class Token:
    """Names one attempt of one run of a job; the fencing token of worker writes."""

    job_id: UUID
    run: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed job: the attempt that owns it, and what to run, as the ledger holds it."""

    token: Token
    task: str
    max_attempts: int
    payload_json: str
    trace_context: str | None = None  # the span its run continues (see app.tracing)


@dataclass(frozen=True, slots=True)
class Doorbell:
    """A message ringing for a job: the job's id and the task the message names."""

    job_id: UUID
    task: str


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be inserted: validated, with its payload already JSON."""

    task: str
    queue: str
    payload_json: str
    max_attempts: int
    delay_seconds: float = 0.0
    priority: int = 0
    idempotency_key: str | None = None
    request_hash: str | None = None
    client_id: str | None = None  # the API key that made it
    parent_id: UUID | None = None  # the running job that made it, committed with its success
    # The schedule and tick that made it: one job per (schedule, tick).
    schedule: str | None = None
    scheduled_for: datetime | None = None
    # At most one in-flight job of its task holds it (ux_jobs_unique_in_flight).
    unique_key: str | None = None
    flow: Flow | None = None  # its limits; None: none
    # The W3C traceparent (and tracestate) of the span that made it; None: tracing is off.
    trace_context: str | None = None
    id: UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The job an idempotency key already made; `expired`: the key's window has passed."""

    id: UUID
    task: str
    state: str
    request_hash: str | None
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Publishable:
    """A job whose message (or, dead, whose dead-letter copy) the relay is to publish."""

    id: UUID
    task: str
    queue: str
    run: int
    priority: int = 0
    trace_context: str | None = None  # the job's, for the publish's span (jobs.trace_context)


# Takes up to `limit` rows for the relay to publish, marked published in the caller's transaction.
Taker = Callable[[SyncConnection, int], list[Publishable]]


@dataclass(frozen=True, slots=True)
class Reaped:
    id: UUID
    task: str
    state: str
    attempts: int


@dataclass(frozen=True, slots=True)
class StaleCopy:
    """A dead run's copy in `<queue>.XQ` that a replay or discard made stale."""

    id: int
    queue: str
    job_id: UUID
    run: int


@dataclass(frozen=True, slots=True)
class DeadRun:
    """A dead run that an operator replayed or discarded: its broker copy is now stale."""

    id: UUID
    queue: str
    run: int


# -- accept ---------------------------------------------------------------------------------


def _insert_params(jobs: Sequence[NewJob], notify: bool) -> dict[str, object]:
    """The rows of `insert_jobs`, one JSON array; each payload goes in as the JSON it already is."""
    rows = [
        {
            "id": j.id,
            "task": j.task,
            "queue": j.queue,
            "payload": orjson.Fragment(j.payload_json),
            "priority": j.priority,
            "max_attempts": j.max_attempts,
            "delay": float(j.delay_seconds),
            "idempotency_key": j.idempotency_key,
            "request_hash": j.request_hash,
            "client_id": j.client_id,
            "parent_id": j.parent_id,
            "schedule": j.schedule,
            "scheduled_for": j.scheduled_for,
            "unique_key": j.unique_key,
            **({} if j.flow is None else j.flow.columns()),
            # Left out when tracing is off: a missing key is NULL, and costs no bytes.
            **({} if j.trace_context is None else {"trace_context": j.trace_context}),
        }
        for j in jobs
    ]
    return {"rows": orjson.dumps(rows).decode(), "notify": notify}


def insert(conn: SyncConnection, jobs: Sequence[NewJob], *, notify: bool = False) -> set[UUID]:
    """Insert jobs; the ids inserted (one whose idempotency key, schedule tick or unique key is
    taken is left out: see `unique_holders`). With `notify`, a row wakes the relay at commit."""
    if not jobs:
        return set()
    outcome = run(conn, queries.INSERT_JOBS, _insert_params(jobs, notify), prepare=True)
    return {row[0] for row in outcome.rows}


async def insert_async(conn: AsyncConnection, jobs: Sequence[NewJob], *, notify: bool = False) -> set[UUID]:
    outcome = await run_async(conn, queries.INSERT_JOBS, _insert_params(jobs, notify), prepare=True)
    return {row[0] for row in outcome.rows}


async def notify_relay_async(conn: AsyncConnection) -> None:
    await run_async(conn, queries.NOTIFY_RELAY)


def key_holder(conn: SyncConnection, key: str, client_id: str | None, ttl_seconds: float) -> KeyHolder | None:
    params = {"key": key, "client_id": client_id, "ttl": ttl_seconds}
    rows = run(conn, queries.FIND_BY_IDEMPOTENCY_KEY, params).rows
    return KeyHolder(*rows[0]) if rows else None


async def key_holder_async(
    conn: AsyncConnection, key: str, client_id: str | None, ttl_seconds: float
) -> KeyHolder | None:
    """The job a client's idempotency key made (an Idempotency-Key belongs to its client), and
    whether the key's window of `ttl_seconds` has passed."""
    params = {"key": key, "client_id": client_id, "ttl": ttl_seconds}
    rows = (await run_async(conn, queries.FIND_BY_IDEMPOTENCY_KEY, params)).rows
    return KeyHolder(*rows[0]) if rows else None


def release_key(conn: SyncConnection, key: str, client_id: str | None, ttl_seconds: float) -> bool:
    """Free a client's key whose window has passed; False when its holder is still inside it."""
    params = {"key": key, "client_id": client_id, "ttl": ttl_seconds}
    return bool(run(conn, queries.RELEASE_IDEMPOTENCY_KEY, params).rows)


async def release_key_async(
    conn: AsyncConnection, key: str, client_id: str | None, ttl_seconds: float
) -> bool:
    params = {"key": key, "client_id": client_id, "ttl": ttl_seconds}
    return bool((await run_async(conn, queries.RELEASE_IDEMPOTENCY_KEY, params)).rows)


# -- the worker -----------------------------------------------------------------------------


def claim(
    conn: psycopg.Connection[Any], worker_id: str, lease_seconds: float, bells: Sequence[Doorbell]
) -> list[Claim | None]:
    """Claim due jobs; for each doorbell, its claim or None (not claimable, or another task)."""
    params = {
        "ids": [bell.job_id for bell in bells],
        "tasks": [bell.task for bell in bells],
        "worker_id": worker_id,
        "lease": lease_seconds,
    }
    claims = {
        (row[0], row[4]): Claim(Token(row[0], row[1], row[2]), row[4], row[3], row[5], row[6])
        for row in run(conn, queries.CLAIM, params, prepare=True).rows
    }
    # A job twice in one batch (a duplicate delivery) is claimed once: the first asker whose
    # message names the ledger's task gets it.
    return [claims.pop((bell.job_id, bell.task), None) for bell in bells]


def job_task(conn: SyncConnection, job_id: UUID) -> tuple[str, str] | None:
    """The (task, state) the ledger holds for a job; None when there is no such job."""
    rows = run(conn, queries.JOB_TASK, {"id": job_id}).rows
    return None if not rows else (str(rows[0][0]), str(rows[0][1]))


def succeed(conn: SyncConnection, items: Sequence[tuple[Token, str]]) -> list[bool]:
    """Fenced: record (token, result JSON) successes; for each, whether the attempt still owned the job."""
    params = {
        "ids": [token.job_id for token, _ in items],
        "runs": [token.run for token, _ in items],
        "attempts": [token.attempt for token, _ in items],
        "results": [result for _, result in items],
    }
    owned = {(row[0], row[1], row[2]) for row in run(conn, queries.SUCCEED, params, prepare=True).rows}
    return [(t.job_id, t.run, t.attempt) in owned for t, _ in items]


def _fence(token: Token) -> dict[str, Any]:
    return {"id": token.job_id, "run": token.run, "attempt": token.attempt}


def retry(conn: SyncConnection, token: Token, error: str, delay_seconds: float) -> str | None:
    """Fenced: running → retrying, due again in `delay_seconds` (or cancelled, when that was
    asked); the new state, None when the attempt no longer owned the job."""
    params = _fence(token) | {"error": error, "delay": delay_seconds}
    rows = run(conn, queries.RETRY, params).rows
    return str(rows[0][0]) if rows else None


def bury(conn: SyncConnection, token: Token, error: str) -> bool:
    """Fenced: running → dead."""
    return bool(run(conn, queries.BURY, _fence(token) | {"error": error}).rows)


def report_progress(
    conn: SyncConnection, token: Token, progress: int, lease_seconds: float
) -> tuple[bool, bool]:
    """Fenced: record progress and renew the lease; (owned, whether its cancellation was asked)."""
    params = _fence(token) | {"progress": progress, "lease": lease_seconds}
    rows = run(conn, queries.REPORT_PROGRESS, params).rows
    return (True, bool(rows[0][1])) if rows else (False, False)


def renew_leases(conn: SyncConnection, worker_id: str, job_ids: Sequence[UUID], lease: float) -> int:
    if not job_ids:
        return 0
    params = {"ids": list(job_ids), "worker_id": worker_id, "lease": lease}
    return run(conn, queries.RENEW_LEASES, params).rowcount


def release(conn: SyncConnection, worker_id: str, job_ids: Sequence[UUID], error: str) -> int:
    """Hand jobs back at once (a worker shutting down mid-attempt); dead after the last attempt."""
    if not job_ids:
        return 0
    params = {"ids": list(job_ids), "worker_id": worker_id, "error": error}
    return len(run(conn, queries.RELEASE, params).rows)


def unclaim(conn: SyncConnection, worker_id: str, tokens: Sequence[Token]) -> int:
    """Undo claims whose attempt never started: the attempt is given back, the job due again."""
    if not tokens:
        return 0
    ids, runs, attempts = [t.job_id for t in tokens], [t.run for t in tokens], [t.attempt for t in tokens]
    params = {"ids": ids, "runs": runs, "attempts": attempts, "worker_id": worker_id}
    return len(run(conn, queries.UNCLAIM, params).rows)


def job_client(conn: SyncConnection, job_id: UUID) -> tuple[bool, str | None]:
    """Whether the job exists, and the key that enqueued it (None: an operator's job)."""
    rows = run(conn, queries.JOB_CLIENT, {"id": job_id}).rows
    return (False, None) if not rows else (True, rows[0][0])


# -- the relay ------------------------------------------------------------------------------


def take_publishable(conn: SyncConnection, limit: int) -> list[Publishable]:
    """Due jobs to publish, oldest due first, marked published in the caller's transaction."""
    rows = run(conn, queries.TAKE_PUBLISHABLE, {"limit": limit}, prepare=True).rows
    return [Publishable(r[0], r[1], r[2], r[4], priority=r[3], trace_context=r[5]) for r in rows]


def take_dead_letters(conn: SyncConnection, limit: int) -> list[Publishable]:
    """Dead jobs whose copy is still to go to `<queue>.XQ`, marked sent in the caller's transaction."""
    rows = run(conn, queries.TAKE_DEAD_LETTERS, {"limit": limit}, prepare=True).rows
    return [Publishable(id=r[0], task=r[1], queue=r[2], run=r[3]) for r in rows]


def take_stale_copies(conn: SyncConnection, limit: int) -> list[StaleCopy]:
    return [StaleCopy(*row) for row in run(conn, queries.TAKE_STALE_DEAD_LETTERS, {"limit": limit}).rows]


def forget_stale_copies(conn: SyncConnection, ids: Sequence[int]) -> None:
    if ids:
        run(conn, queries.FORGET_STALE_DEAD_LETTERS, {"ids": list(ids)})


def seconds_until_next_due(conn: SyncConnection) -> float | None:
    value = run(conn, queries.SECONDS_UNTIL_NEXT_DUE, prepare=True).rows[0][0]
    return None if value is None else float(value)


def reap_expired_leases(conn: SyncConnection, limit: int = 1000) -> list[Reaped]:
    return [Reaped(*row[:4]) for row in run(conn, queries.REAP_EXPIRED_LEASES, {"limit": limit}).rows]


def rearm_stale_publications(conn: SyncConnection, age_seconds: float) -> int:
    """Publish again jobs whose message was published long ago but never claimed."""
    return run(conn, queries.REARM_STALE_PUBLICATIONS, {"age": age_seconds}).rowcount


def rearm_forgotten(conn: SyncConnection, cutoff: datetime, dead_ttl_seconds: float) -> int:
    """Publish again every job (and recent dead job's copy) published before `cutoff`, unclaimed."""
    return run(conn, queries.REARM_FORGOTTEN, {"cutoff": cutoff, "dead_ttl": dead_ttl_seconds}).rowcount


# -- operators ------------------------------------------------------------------------------


def _dead_params(task: str | None, ids: Sequence[UUID] | None, limit: int) -> dict[str, Any]:
    return {"task": task, "ids": None if ids is None else list(ids), "limit": limit}


async def replay_dead(
    conn: AsyncConnection, *, task: str | None = None, ids: Sequence[UUID] | None = None, limit: int
) -> list[DeadRun]:
    """Replay up to `limit` dead jobs (all, one task's, or the given ids), oldest first."""
    rows = (await run_async(conn, queries.REPLAY_DEAD, _dead_params(task, ids, limit))).rows
    return [DeadRun(row[0], row[1], row[2]) for row in rows]


async def discard_dead(
    conn: AsyncConnection, *, task: str | None = None, ids: Sequence[UUID] | None = None, limit: int
) -> list[DeadRun]:
    """Delete up to `limit` dead jobs and their history, oldest first."""
    rows = (await run_async(conn, queries.DISCARD_DEAD, _dead_params(task, ids, limit))).rows
    return [DeadRun(*row) for row in rows]


async def job_state(conn: AsyncConnection, job_id: UUID) -> str | None:
    rows = (await run_async(conn, queries.JOB_STATE, {"id": job_id})).rows
    return None if not rows else str(rows[0][0])


def job_states(conn: SyncConnection, job_ids: Sequence[UUID]) -> dict[UUID, str]:
    """The states of the jobs that exist among `job_ids`."""
    return {row[0]: str(row[1]) for row in run(conn, queries.JOB_STATES, {"ids": list(job_ids)}).rows}


async def job_states_async(conn: AsyncConnection, job_ids: Sequence[UUID]) -> dict[UUID, str]:
    rows = (await run_async(conn, queries.JOB_STATES, {"ids": list(job_ids)})).rows
    return {row[0]: str(row[1]) for row in rows}
