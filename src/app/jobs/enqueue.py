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

from app.errors import AlreadyInFlight, IdempotencyConflict, LedgerUnavailable, UnstorableInput
from app.jobs.context import peek_current
from app.jobs.flow import Limits, flow_of
from app.jobs.validation import NUL, check_payload_json
from app.ledger import jobs as ledger
from app.ledger import unique
from app.ledger.connections import AsyncConnection, SyncConnection
from app.ledger.jobs import NewJob
from app.ledger.schema import JobState
from app.ledger.unique import Holder
from app.settings import get_settings
from app.tracing import current_context

# A year: longer delays are almost certainly a unit mistake (ms for s).
MAX_DELAY_SECONDS = 365 * 24 * 3600
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_UNIQUE_KEY_LENGTH = 255
# Namespaces of the stored unique key, so that the two policies sharing the unique index never
# meet: a task's own keys (a payload field, or the enqueue option), the one-job-per-client keys,
# and a payload field's value too long for a btree index row, stored as its digest. A key
# enqueued by an API client is that client's own ("of:<key id>:key:acme"): two clients never
# meet each other's keys, so one can neither learn of another's job through a duplicate answer
# nor hold it back by taking its key first. Jobs enqueued in Python, by schedules and by running
# tasks share the space of no client ("key:acme").
UNIQUE_NAMESPACE = "key:"
CLIENT_NAMESPACE = "client:"
DIGEST_NAMESPACE = "sha256:"
OWN_NAMESPACE = "of:"
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
    def unique_key(self) -> str | None: ...
    @property
    def limits(self) -> Limits: ...
    def max_attempts(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    """A job as enqueued: its id, task and state. `duplicate`: no job was made, this is the job
    that was there already: the one an idempotency key made (`replayed` too), or the in-flight
    job holding the unique key."""

    id: UUID
    task: str
    state: str
    duplicate: bool
    replayed: bool = False


def fingerprint(
    task: str, payload_json: str, delay_seconds: float, priority: int, unique_key: str | None = None
) -> str:
    """What a keyed request asked for, whichever door it came through: the same key with the
    same job returns the first job; with another job it is refused. A unique key given to the
    enqueue is part of the job asked for; left out when not given, so that the fingerprints kept
    from before unique keys still match."""
    asked: list[Any] = [task, orjson.loads(payload_json), float(delay_seconds), priority]
    if unique_key is not None:
        asked.append(unique_key)
    return hashlib.sha256(orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_unique_key(value: str) -> str:
    """The enqueue option `unique_key`: 1 to MAX_UNIQUE_KEY_LENGTH characters, storable."""
    if not 1 <= len(value) <= MAX_UNIQUE_KEY_LENGTH:
        raise ValueError(f"unique_key must be 1 to {MAX_UNIQUE_KEY_LENGTH} characters")
    if NUL in value:
        raise ValueError("unique_key must not contain a NUL character (\\u0000), which cannot be stored")
    return value


def stored_unique_key(
    spec: Enqueueable, model: BaseModel, client_id: str | None, given: str | None
) -> str | None:
    """The key at most one in-flight job of the task holds: the client's, for a task that runs
    one job per client at a time (an operator's job, without a client, is never held back);
    else the one given to this enqueue, or the value of the task's `unique_key` payload field,
    in the space of the client that enqueued it."""
    if spec.one_per_client and client_id is not None:
        return f"{CLIENT_NAMESPACE}{client_id}"
    space = "" if client_id is None else f"{OWN_NAMESPACE}{client_id}:"
    if given is None and spec.unique_key is not None:
        value = model.model_dump(mode="json", include={spec.unique_key}).get(spec.unique_key)
        if value is None:
            return None
        given = value if isinstance(value, str) else orjson.dumps(value).decode()
        if len(given) > MAX_UNIQUE_KEY_LENGTH:
            return space + DIGEST_NAMESPACE + hashlib.sha256(given.encode()).hexdigest()
    return None if given is None else space + UNIQUE_NAMESPACE + check_unique_key(given)


def shown_unique_key(stored: str | None) -> str | None:
    """A stored unique key as a job's view shows it: as given, without its client's space or
    its namespace."""
    if stored is not None and stored.startswith(OWN_NAMESPACE):
        stored = stored.split(":", 2)[2]
    if stored is not None and stored.startswith(UNIQUE_NAMESPACE):
        return stored[len(UNIQUE_NAMESPACE) :]
    return stored


def new_job(
    spec: Enqueueable,
    payload: Any,
    *,
    delay_seconds: float = 0.0,
    priority: int = 0,
    idempotency_key: str | None = None,
    client_id: str | None = None,
    unique_key: str | None = None,
) -> NewJob:
    """The job to insert; raises pydantic's ValidationError when the payload does not fit the task,
    UnstorableInput when it holds what the ledger cannot store, ValueError for a `unique_key`
    that cannot be one (empty, too long, holding a NUL).

    A dict is validated as the JSON it becomes (strict types: `true` is not an integer, `"5"`
    is not a number), whichever door it came through. Inside a running task the new job is
    that job's child. With tracing on it keeps the current span's context (see app.tracing).
    """
    if isinstance(payload, spec.payload_model):
        model = payload
    else:
        try:
            raw = orjson.dumps(payload)
        except TypeError as error:  # an integer past 64 bits: no JSON column holds it exactly
            raise UnstorableInput((), f"holds a value the ledger cannot store: {error}") from None
        model = spec.payload_model.model_validate_json(raw)
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
            fingerprint(spec.name, payload_json, delay_seconds, priority, unique_key)
            if idempotency_key
            else None
        ),
        parent_id=running.token.job_id if running is not None else None,
        unique_key=stored_unique_key(spec, model, client_id, unique_key),
        flow=flow_of(spec.limits, model),
        trace_context=current_context(),
    )


def _resolved(job: NewJob, first: ledger.KeyHolder) -> Accepted:
    """The answer for a job whose idempotency key its client used before: the first job."""
    if first.request_hash != job.request_hash:
        raise IdempotencyConflict(job.idempotency_key or "")
    return Accepted(first.id, first.task, first.state, duplicate=True, replayed=True)


def answer_held(job: NewJob, holder: Holder) -> Accepted:
    """The answer for a job whose unique key an in-flight job holds: that job, as a duplicate.
    A task that runs one job per client refuses the second instead (AlreadyInFlight names the
    holder): its client asked for something it cannot have yet, and is told so."""
    if job.unique_key is not None and job.unique_key.startswith(CLIENT_NAMESPACE):
        raise AlreadyInFlight(job.task, holder.id)
    return Accepted(holder.id, job.task, holder.state, duplicate=True)


def contended(job: NewJob) -> LedgerUnavailable:
    """A job whose keys kept changing hands through every try: a 503, to be asked again."""
    what = f"Idempotency-Key {job.idempotency_key!r}" if job.idempotency_key else f"job {job.unique_key!r}"
    return LedgerUnavailable(f"{what} is contended; retry later")


async def store(conn: AsyncConnection, job: NewJob) -> Accepted:
    """Insert the job in the caller's transaction and wake the relay when it commits.

    A job whose idempotency key is already taken is not inserted: the first job is returned
    (the same request) or IdempotencyConflict raised (another request). A key whose window
    (IDEMPOTENCY_KEY_TTL_SECONDS from its first job's creation) has passed is released from
    that job, and the job is inserted anew. A job whose unique key an in-flight job of its task
    holds is not inserted: that job is the answer (`answer_held`). The idempotency key is
    looked at first: a repeated request gets its first job whoever holds the unique key now.
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
            holder = (await unique.holders_async(conn, [job])).get(job.id)
            if holder is not None:
                return answer_held(job, holder)
        # What refused the row is gone (its transaction rolled back, or its job finished): again.
    raise contended(job)


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
            holder = unique.holders(conn, [job]).get(job.id)
            if holder is not None:
                return answer_held(job, holder)
    raise contended(job)


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
