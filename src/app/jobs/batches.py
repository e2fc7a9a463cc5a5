"""Many jobs at once: each validated as `enqueue` validates one, all stored by one INSERT.

`POST /api/v1/jobs/batch`, `task.enqueue_many` and `conveyor enqueue --file` end in
`store_many` (or `store_many_sync`): the ledger's `insert_jobs` with every row in one JSON
array, in the caller's transaction, and a NOTIFY that PostgreSQL delivers to the relay when
that transaction commits. A batch is all or nothing: an invalid item refuses the whole batch
before anything is written.

Duplicates are not invalid: a job whose unique key an in-flight job holds (or an earlier job of
the same batch: the INSERT takes the rows in order) is left out by the unique index, and its
place in the answer is the holder, `duplicate` set, while the rest are stored.

An idempotency key covers a whole batch. The batch's first stored job, its anchor, holds the key
and a fingerprint of every job of the batch and of the anchor's place in it; the other jobs' ids
are derived from the anchor's id. A repeat finds the anchor by its key, as a single keyed job is
found, and from it every id of the first batch: nothing is kept per job beyond what one keyed
job keeps, and the key's window and its release work unchanged. A keyed batch is two INSERTs:
the anchor first (where a repeat stops, or waits for a first batch still in flight), then the
rest. The anchor is the first job unless that one is a duplicate: then the next one is tried.
A batch of duplicates only stores nothing, so its key is not kept either.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.errors import IdempotencyConflict, JobRefused, UnstorableInput
from app.jobs import enqueue as enqueuing
from app.jobs.enqueue import STORE_ATTEMPTS, Accepted, Enqueueable, answer_held
from app.ledger import jobs as ledger
from app.ledger import unique
from app.ledger.connections import AsyncConnection, SyncConnection
from app.ledger.jobs import KeyHolder, NewJob
from app.ledger.schema import JobState
from app.ledger.unique import Holder
from app.settings import get_settings

# The state a repeated batch reports for one of its jobs that the ledger no longer holds (an
# operator discarded it, or retention pruned it while the key's window was still open).
GONE = "deleted"


def new_jobs(
    spec: Enqueueable,
    payloads: Iterable[Any],
    *,
    delay_seconds: float = 0.0,
    priority: int = 0,
    client_id: str | None = None,
) -> list[NewJob]:
    """The jobs to insert, one per payload, each validated exactly as `enqueue` validates one
    (a task's `unique_key` field gives each job its own key).

    Raises pydantic's ValidationError listing the errors of every invalid payload, each `loc`
    starting with the payload's index, and UnstorableInput (its `loc` also led by the index)
    for a payload holding what the ledger cannot store.
    """
    jobs: list[NewJob] = []
    problems: list[InitErrorDetails] = []
    for index, payload in enumerate(payloads):
        try:
            job = enqueuing.new_job(
                spec, payload, delay_seconds=delay_seconds, priority=priority, client_id=client_id
            )
        except ValidationError as error:
            problems += [_indexed(index, detail) for detail in error.errors()]
        except UnstorableInput as error:
            raise UnstorableInput((index, *error.loc)) from None
        else:
            jobs.append(job)
    if problems:
        raise ValidationError.from_exception_data(spec.payload_model.__name__, problems)
    return jobs


def _indexed(index: int, detail: Any) -> InitErrorDetails:
    # A custom error type keeps the original type name and message whatever produced it
    # (pydantic rebuilds only its own types from their name).
    return {
        "type": PydanticCustomError(detail["type"], detail["msg"]),
        "loc": (index, *detail["loc"]),
        "input": detail.get("input"),
    }


def fingerprint(jobs: Sequence[NewJob]) -> str:
    """What a keyed batch asked for: every job's task, payload, delay and priority, in order, and
    its unique key when it has one of its own (not a client's, which comes with the key's
    client: left out, the fingerprints kept from before unique keys still match). Payload keys
    are sorted, as a single job's fingerprint sorts them."""
    items = [
        [job.task, orjson.loads(job.payload_json), float(job.delay_seconds), job.priority]
        + ([] if _own_key(job) is None else [_own_key(job)])
        for job in jobs
    ]
    canonical = orjson.dumps(["batch", items], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _own_key(job: NewJob) -> str | None:
    key = job.unique_key
    return None if key is None or key.startswith(enqueuing.CLIENT_NAMESPACE) else key


def anchor_hash(batch: str, position: int) -> str:
    """The fingerprint an anchor holds: the batch's, and the anchor's place in it when it is not
    the first job (the batch's first jobs were duplicates)."""
    return batch if position == 0 else hashlib.sha256(f"{batch}:{position}".encode()).hexdigest()


def member_id(anchor: UUID, index: int, position: int = 0) -> UUID:
    """The id of a keyed batch's job at `index`, derived from its anchor's id (at `position`)."""
    return anchor if index == position else uuid.uuid5(anchor, str(index))


def _anchor(jobs: Sequence[NewJob], key: str, batch: str, position: int) -> NewJob:
    return replace(jobs[position], idempotency_key=key, request_hash=anchor_hash(batch, position))


def _members(jobs: Sequence[NewJob], anchor: UUID, position: int) -> list[NewJob]:
    """The jobs after the anchor, with their ids derived from the anchor's."""
    return [replace(job, id=member_id(anchor, i, position)) for i, job in enumerate(jobs) if i > position]


def _position(jobs: Sequence[NewJob], key: str, batch: str, first: KeyHolder) -> int:
    """Where the anchor of the first batch with this key stood; IdempotencyConflict when that
    batch was another one."""
    for position in range(len(jobs)):
        if first.request_hash == anchor_hash(batch, position):
            return position
    raise IdempotencyConflict(key)


async def store_many(
    conn: AsyncConnection, jobs: Sequence[NewJob], *, idempotency_key: str | None = None
) -> list[Accepted]:
    """Insert the jobs in the caller's transaction and wake the relay when it commits; a job
    whose unique key is held is answered by its holder (`enqueue.answer_held`).

    With `idempotency_key`, a batch whose key is already taken stores nothing: the first
    batch's jobs are returned (the same batch) or IdempotencyConflict raised (another one).
    Raises JobRefused when the ledger left a job out for another reason than its unique key;
    the caller's transaction must then roll back, since the rest of the batch was written in it.
    """
    if not jobs:
        return []
    if idempotency_key is None:
        return _answers(jobs, await _insert_each(conn, jobs))
    batch = fingerprint(jobs)
    ttl = get_settings().idempotency_key_ttl_seconds
    held: dict[UUID, Holder] = {}
    position, lost = 0, 0
    while position < len(jobs) and lost < STORE_ATTEMPTS:
        anchor = _anchor(jobs, idempotency_key, batch, position)
        if await ledger.insert_async(conn, [anchor], notify=True):
            rest = _members(jobs, anchor.id, position)
            held |= await _insert_each(conn, rest)
            return _answers([*jobs[:position], anchor, *rest], held)
        first = await ledger.key_holder_async(conn, idempotency_key, anchor.client_id, ttl)
        if first is not None and first.expired:
            await ledger.release_key_async(conn, idempotency_key, anchor.client_id, ttl)
        elif first is not None:
            at = _position(jobs, idempotency_key, batch, first)
            ids = [member_id(first.id, i, at) for i in range(len(jobs))]
            states = await ledger.job_states_async(conn, ids)
            gone = [replace(job, id=i) for job, i in zip(jobs, ids, strict=True) if i not in states]
            return _replayed(jobs, ids, states, await unique.holders_async(conn, gone))
        elif holder := (await unique.holders_async(conn, [anchor])).get(anchor.id):
            held[jobs[position].id] = holder
            position += 1
            continue
        lost += 1
    if position < len(jobs):
        raise enqueuing.contended(jobs[position])
    return _answers(jobs, held)


def store_many_sync(
    conn: SyncConnection, jobs: Sequence[NewJob], *, idempotency_key: str | None = None
) -> list[Accepted]:
    """`store_many`, for a sync connection."""
    if not jobs:
        return []
    if idempotency_key is None:
        return _answers(jobs, _insert_each_sync(conn, jobs))
    batch = fingerprint(jobs)
    ttl = get_settings().idempotency_key_ttl_seconds
    held: dict[UUID, Holder] = {}
    position, lost = 0, 0
    while position < len(jobs) and lost < STORE_ATTEMPTS:
        anchor = _anchor(jobs, idempotency_key, batch, position)
        if ledger.insert(conn, [anchor], notify=True):
            rest = _members(jobs, anchor.id, position)
            held |= _insert_each_sync(conn, rest)
            return _answers([*jobs[:position], anchor, *rest], held)
        first = ledger.key_holder(conn, idempotency_key, anchor.client_id, ttl)
        if first is not None and first.expired:
            ledger.release_key(conn, idempotency_key, anchor.client_id, ttl)
        elif first is not None:
            at = _position(jobs, idempotency_key, batch, first)
            ids = [member_id(first.id, i, at) for i in range(len(jobs))]
            states = ledger.job_states(conn, ids)
            gone = [replace(job, id=i) for job, i in zip(jobs, ids, strict=True) if i not in states]
            return _replayed(jobs, ids, states, unique.holders(conn, gone))
        elif holder := unique.holders(conn, [anchor]).get(anchor.id):
            held[jobs[position].id] = holder
            position += 1
            continue
        lost += 1
    if position < len(jobs):
        raise enqueuing.contended(jobs[position])
    return _answers(jobs, held)


async def _insert_each(conn: AsyncConnection, jobs: Sequence[NewJob]) -> dict[UUID, Holder]:
    """Insert the jobs; the holder of each one's unique key that the index left out. A job left
    out whose holder finished before it was looked up is inserted again, a few times at most."""
    held: dict[UUID, Holder] = {}
    pending = list(jobs)
    for _ in range(STORE_ATTEMPTS):
        inserted = await ledger.insert_async(conn, pending, notify=True) if pending else set()
        pending = _left_out(pending, inserted)
        if not pending:
            return held
        found = await unique.holders_async(conn, pending)
        held |= found
        pending = [job for job in pending if job.id not in found]
    if pending:
        raise enqueuing.contended(pending[0])
    return held


def _insert_each_sync(conn: SyncConnection, jobs: Sequence[NewJob]) -> dict[UUID, Holder]:
    held: dict[UUID, Holder] = {}
    pending = list(jobs)
    for _ in range(STORE_ATTEMPTS):
        inserted = ledger.insert(conn, pending, notify=True) if pending else set()
        pending = _left_out(pending, inserted)
        if not pending:
            return held
        found = unique.holders(conn, pending)
        held |= found
        pending = [job for job in pending if job.id not in found]
    if pending:
        raise enqueuing.contended(pending[0])
    return held


def _left_out(jobs: Sequence[NewJob], inserted: set[UUID]) -> list[NewJob]:
    """The jobs the INSERT left out; JobRefused when one of them has no unique key to explain it."""
    left_out = [job for job in jobs if job.id not in inserted]
    refused = sum(1 for job in left_out if job.unique_key is None)
    if refused:
        raise JobRefused(
            f"the ledger left out {refused} of the batch's {len(jobs)} jobs (each conflicts with a job"
            " it holds); the batch is refused whole"
        )
    return left_out


def _answers(jobs: Sequence[NewJob], held: dict[UUID, Holder]) -> list[Accepted]:
    return [
        answer_held(job, held[job.id])
        if job.id in held
        else Accepted(job.id, job.task, JobState.QUEUED, duplicate=False)
        for job in jobs
    ]


def _replayed(
    jobs: Sequence[NewJob], ids: Sequence[UUID], states: dict[UUID, str], held: dict[UUID, Holder]
) -> list[Accepted]:
    """A repeated batch: each job as it is now. A job the first batch did not store (a duplicate
    then) is the job holding its unique key now, if one does."""
    answers = []
    for job, job_id in zip(jobs, ids, strict=True):
        holder = held.get(job_id)
        if job_id not in states and holder is not None:
            answers.append(Accepted(holder.id, job.task, holder.state, duplicate=True, replayed=True))
        else:
            answers.append(
                Accepted(job_id, job.task, states.get(job_id, GONE), duplicate=True, replayed=True)
            )
    return answers
