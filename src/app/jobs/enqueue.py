"""A new job from any door: validated against its task, fingerprinted, stored with its idempotency key.

The HTTP API, the CLI, `task.enqueue` in your own code and a running task's child jobs all
end in `store` (or `store_sync`): the ledger's one INSERT, in the caller's transaction, and a
NOTIFY that PostgreSQL delivers to the relay only when that transaction commits. A job
enqueued in a transaction that rolls back never existed; one in a transaction that commits
is published.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import orjson
from pydantic import BaseModel

from app.errors import AlreadyInFlight, IdempotencyConflict, LedgerUnavailable
from app.jobs.context import peek_current
from app.jobs.flow import Limits, flow_of
from app.jobs.validation import check_payload_json
from app.ledger import jobs as ledger
from app.ledger.connections import AsyncConnection, SyncConnection
from app.ledger.jobs import NewJob
from app.ledger.schema import JobState
from app.settings import get_settings

# A year: longer delays are almost certainly a unit mistake (ms for s).
MAX_DELAY_SECONDS = 365 * 24 * 3600
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Tries of a keyed insert: each lost race (a holder that rolled back or finished, an expired
# key released) costs one; more than a few means the key is fought over.
STORE_ATTEMPTS = 5


class Enqueueable(Protocol):
    """What making a job needs of a task (a registered task spec is one)."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def payload_model(self) -> type[BaseModel]: ...
    @property
    def one_per_client(self) -> bool: ...
    @property
    def limits(self) -> Limits: ...
    def max_attempts(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    """A job as enqueued: its id, task and state; `duplicate` when an idempotency key found the
    first job instead."""

    id: UUID
    task: str
    state: str
    duplicate: bool


def fingerprint(task: str, payload_json: str, delay_seconds: float, priority: int) -> str:
    """What a keyed request asked for, whichever door it came through: the same key with the
    same job returns the first job; with another job it is refused."""
    canonical = orjson.dumps(
        [task, orjson.loads(payload_json), float(delay_seconds), priority], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


def unique_key(spec: Enqueueable, client_id: str | None) -> str | None:
    """The key at most one in-flight job of the task holds: the client's, for a task that runs
    one job per client at a time. An operator's job (no client) is never held back."""
    if spec.one_per_client and client_id is not None:
        return f"client:{client_id}"
    return None


def new_job(
    spec: Enqueueable,
    payload: Any,
    *,
    delay_seconds: float = 0.0,
    priority: int = 0,
    idempotency_key: str | None = None,
    client_id: str | None = None,
) -> NewJob:
    """The job to insert; raises pydantic's ValidationError when the payload does not fit the task,
    UnstorableInput when it holds what the ledger cannot store.

    A dict is validated as the JSON it becomes (strict types: `true` is not an integer, `"5"`
    is not a number), whichever door it came through. Inside a running task the new job is
    that job's child.
    """
    if isinstance(payload, spec.payload_model):
        model = payload
    else:
        model = spec.payload_model.model_validate_json(orjson.dumps(payload))
    payload_json = model.model_dump_json()
    check_payload_json(payload_json)
    running = peek_current()
    return NewJob(
        task=spec.name,
        queue=spec.queue,
        payload_json=payload_json,
        max_attempts=spec.max_attempts(),
        delay_seconds=float(delay_seconds),
        priority=priority,
        idempotency_key=idempotency_key,
        client_id=client_id,
        request_hash=(
            fingerprint(spec.name, payload_json, delay_seconds, priority) if idempotency_key else None
        ),
        parent_id=running.token.job_id if running is not None else None,
        unique_key=unique_key(spec, client_id),
        flow=flow_of(spec.limits, model),
    )


def _resolved(job: NewJob, first: ledger.KeyHolder) -> Accepted:
    """The answer for a job whose idempotency key its client used before: the first job."""
    if first.request_hash != job.request_hash:
        raise IdempotencyConflict(job.idempotency_key or "")
    return Accepted(first.id, first.task, first.state, duplicate=True)


def _refuse_if_held(job: NewJob, holders: dict[UUID, UUID]) -> None:
    """The policy of a taken unique key, for now: the job is refused, naming the holder."""
    if job.id in holders:
        raise AlreadyInFlight(job.task, holders[job.id])


def _contended(job: NewJob) -> LedgerUnavailable:
    what = f"Idempotency-Key {job.idempotency_key!r}" if job.idempotency_key else f"job {job.unique_key!r}"
    return LedgerUnavailable(f"{what} is contended; retry later")


async def store(conn: AsyncConnection, job: NewJob) -> Accepted:
    """Insert the job in the caller's transaction and wake the relay when it commits.

    A job whose idempotency key is already taken is not inserted: the first job is returned
    (the same request) or IdempotencyConflict raised (another request). A key whose window
    (IDEMPOTENCY_KEY_TTL_SECONDS from its first job's creation) has passed is released from
    that job, and the job is inserted anew. A job whose unique key an in-flight job of its task
    holds is not inserted: AlreadyInFlight names that job.
    """
    ttl = get_settings().idempotency_key_ttl_seconds
    for _ in range(STORE_ATTEMPTS):
        if await ledger.insert_async(conn, [job], notify=True):
            return Accepted(job.id, job.task, JobState.QUEUED, duplicate=False)
        if job.idempotency_key is not None:
            first = await ledger.key_holder_async(conn, job.idempotency_key, job.client_id, ttl)
            if first is not None and first.expired:
                await ledger.release_key_async(conn, job.idempotency_key, job.client_id, ttl)
                continue
            if first is not None:
                return _resolved(job, first)
        if job.unique_key is not None:
            _refuse_if_held(job, await ledger.unique_holders_async(conn, [job]))
        # What refused the row is gone (its transaction rolled back, or its job finished): again.
    raise _contended(job)


def store_sync(conn: SyncConnection, job: NewJob) -> Accepted:
    """`store`, for a sync connection."""
    ttl = get_settings().idempotency_key_ttl_seconds
    for _ in range(STORE_ATTEMPTS):
        if ledger.insert(conn, [job], notify=True):
            return Accepted(job.id, job.task, JobState.QUEUED, duplicate=False)
        if job.idempotency_key is not None:
            first = ledger.key_holder(conn, job.idempotency_key, job.client_id, ttl)
            if first is not None and first.expired:
                ledger.release_key(conn, job.idempotency_key, job.client_id, ttl)
                continue
            if first is not None:
                return _resolved(job, first)
        if job.unique_key is not None:
            _refuse_if_held(job, ledger.unique_holders(conn, [job]))
    raise _contended(job)


# -- sessions: the caller's transaction, or one of our own -----------------------------------


def sync_connection(session: Any) -> SyncConnection:
    """The connection of a SQLAlchemy Session or Connection, or a psycopg connection, as given."""
    from sqlalchemy.orm import Session

    if isinstance(session, Session):
        return session.connection()
    return session  # type: ignore[no-any-return]


async def async_connection(session: Any) -> AsyncConnection:
    """The connection of an AsyncSession or AsyncConnection, or a psycopg AsyncConnection."""
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(session, AsyncSession):
        return await session.connection()
    return session  # type: ignore[no-any-return]


@contextmanager
def own_transaction() -> Iterator[SyncConnection]:
    from app.ledger.engines import sync_engine

    with sync_engine().begin() as conn:
        yield conn


def own_async_transaction() -> AbstractAsyncContextManager[AsyncConnection]:
    from app.ledger.engines import async_engine

    return async_engine().begin()
