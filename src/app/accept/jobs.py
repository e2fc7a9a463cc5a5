"""A new job from any door: validated against its task, fingerprinted, stored with its idempotency key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from app.accept.validation import check_payload_json
from app.errors import IdempotencyConflict, LedgerUnavailable
from app.jobs.registry import TaskSpec
from app.ledger import jobs as ledger
from app.ledger.connections import AsyncConnection
from app.ledger.jobs import NewJob
from app.ledger.schema import JobState
from app.settings import get_settings

# A year: longer delays are almost certainly a unit mistake (ms for s).
MAX_DELAY_SECONDS = 365 * 24 * 3600
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Tries of a keyed insert: each lost race (a holder that rolled back, an expired key released)
# costs one; more than a few means the key is fought over.
STORE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Accepted:
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


def new_job(
    spec: TaskSpec[Any],
    payload: Any,
    *,
    delay_seconds: float = 0.0,
    priority: int = 0,
    idempotency_key: str | None = None,
) -> NewJob:
    """The job to insert; raises pydantic's ValidationError when the payload does not fit the task,
    UnstorableInput when it holds what the ledger cannot store.

    A dict is validated as the JSON it becomes (strict types: `true` is not an integer, `"5"`
    is not a number), whichever door it came through.
    """
    if isinstance(payload, spec.payload_model):
        model = payload
    else:
        model = spec.payload_model.model_validate_json(orjson.dumps(payload))
    payload_json = model.model_dump_json()
    check_payload_json(payload_json)
    return NewJob(
        task=spec.name,
        queue=spec.queue,
        payload_json=payload_json,
        max_attempts=spec.retry.resolved_max_attempts(),
        delay_seconds=float(delay_seconds),
        priority=priority,
        idempotency_key=idempotency_key,
        request_hash=(
            fingerprint(spec.name, payload_json, delay_seconds, priority) if idempotency_key else None
        ),
    )


async def store(conn: AsyncConnection, job: NewJob) -> Accepted:
    """Insert the job in the caller's transaction and wake the relay when it commits.

    A job whose key is already taken is not inserted: the first job is returned (the same
    request) or IdempotencyConflict raised (another request). A key whose window
    (IDEMPOTENCY_KEY_TTL_SECONDS from its first job's creation) has passed is released from
    that job, and the job is inserted anew.
    """
    ttl = get_settings().idempotency_key_ttl_seconds
    for _ in range(STORE_ATTEMPTS):
        if await ledger.insert_async(conn, [job]):
            await ledger.notify_relay_async(conn)
            return Accepted(job.id, job.task, JobState.QUEUED, duplicate=False)
        assert job.idempotency_key is not None  # only a taken key leaves a row out
        first = await ledger.key_holder_async(conn, job.idempotency_key, ttl)
        if first is None:  # the first request's transaction rolled back after we waited on it
            continue
        if first.expired:
            await ledger.release_key_async(conn, job.idempotency_key, ttl)
            continue
        if first.request_hash != job.request_hash:
            raise IdempotencyConflict(job.idempotency_key)
        return Accepted(first.id, first.task, first.state, duplicate=True)
    raise LedgerUnavailable(f"Idempotency-Key {job.idempotency_key!r} is contended; retry later")
