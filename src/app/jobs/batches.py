"""Many jobs at once: each validated as `enqueue` validates one, all stored by one INSERT.

`POST /api/v1/jobs/batch`, `task.enqueue_many` and `conveyor enqueue --file` end in
`store_many` (or `store_many_sync`): the ledger's `insert_jobs` with every row in one JSON
array, in the caller's transaction, and a NOTIFY that PostgreSQL delivers to the relay when
that transaction commits. A batch is all or nothing: an invalid item refuses the whole batch
before anything is written.

An idempotency key covers a whole batch. The batch's first job, its anchor, holds the key and a
fingerprint of every job of the batch; the other jobs' ids are derived from the anchor's id. A
repeat finds the anchor by its key, as a single keyed job is found, and from it every id of the
first batch: nothing is kept per job beyond what one keyed job keeps, and the key's window and
its release work unchanged. A keyed batch is two INSERTs: the anchor first (where a repeat
stops, or waits for a first batch still in flight), then the rest.
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

from app.errors import JobRefused, UnstorableInput
from app.jobs import enqueue as enqueuing
from app.jobs.enqueue import Accepted, Enqueueable
from app.ledger import jobs as ledger
from app.ledger.connections import AsyncConnection, SyncConnection
from app.ledger.jobs import NewJob
from app.ledger.schema import JobState

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
    """The jobs to insert, one per payload, each validated exactly as `enqueue` validates one.

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
    """What a keyed batch asked for: every job's task, payload, delay and priority, in order.
    Payload keys are sorted, as a single job's fingerprint sorts them."""
    items = [
        [job.task, orjson.loads(job.payload_json), float(job.delay_seconds), job.priority] for job in jobs
    ]
    canonical = orjson.dumps(["batch", items], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def member_id(anchor: UUID, index: int) -> UUID:
    """The id of a keyed batch's job at `index`, derived from its anchor's id."""
    return anchor if index == 0 else uuid.uuid5(anchor, str(index))


def keyed(jobs: Sequence[NewJob], key: str) -> list[NewJob]:
    """The batch with its anchor holding `key` and the batch's fingerprint, and derived ids."""
    anchor = replace(jobs[0], idempotency_key=key, request_hash=fingerprint(jobs))
    return [anchor, *(replace(job, id=member_id(anchor.id, i)) for i, job in enumerate(jobs[1:], 1))]


async def store_many(
    conn: AsyncConnection, jobs: Sequence[NewJob], *, idempotency_key: str | None = None
) -> list[Accepted]:
    """Insert the jobs in the caller's transaction and wake the relay when it commits.

    With `idempotency_key`, a batch whose key is already taken stores nothing: the first
    batch's jobs are returned (the same batch) or IdempotencyConflict raised (another one).
    Raises JobRefused when the ledger left a job out; the caller's transaction must then roll
    back, since the rest of the batch was written in it.
    """
    if not jobs:
        return []
    if idempotency_key is None:
        _check_stored(jobs, await ledger.insert_async(conn, jobs, notify=True))
        return _accepted(jobs)
    anchor, *rest = keyed(jobs, idempotency_key)
    first = await enqueuing.store(conn, anchor)
    if first.duplicate:
        ids = [member_id(first.id, i) for i in range(len(jobs))]
        return _replayed(jobs, ids, await ledger.job_states_async(conn, ids))
    if rest:
        _check_stored(rest, await ledger.insert_async(conn, rest))
    return _accepted([anchor, *rest])


def store_many_sync(
    conn: SyncConnection, jobs: Sequence[NewJob], *, idempotency_key: str | None = None
) -> list[Accepted]:
    """`store_many`, for a sync connection."""
    if not jobs:
        return []
    if idempotency_key is None:
        _check_stored(jobs, ledger.insert(conn, jobs, notify=True))
        return _accepted(jobs)
    anchor, *rest = keyed(jobs, idempotency_key)
    first = enqueuing.store_sync(conn, anchor)
    if first.duplicate:
        ids = [member_id(first.id, i) for i in range(len(jobs))]
        return _replayed(jobs, ids, ledger.job_states(conn, ids))
    if rest:
        _check_stored(rest, ledger.insert(conn, rest))
    return _accepted([anchor, *rest])


def _check_stored(jobs: Sequence[NewJob], inserted: set[UUID]) -> None:
    if len(inserted) != len(jobs):
        missing = len(jobs) - len(inserted)
        raise JobRefused(
            f"the ledger left out {missing} of the batch's {len(jobs)} jobs (each conflicts with a job"
            " it holds); the batch is refused whole"
        )


def _accepted(jobs: Sequence[NewJob]) -> list[Accepted]:
    return [Accepted(job.id, job.task, JobState.QUEUED, duplicate=False) for job in jobs]


def _replayed(jobs: Sequence[NewJob], ids: Sequence[UUID], states: dict[UUID, str]) -> list[Accepted]:
    return [
        Accepted(job_id, job.task, states.get(job_id, GONE), duplicate=True)
        for job, job_id in zip(jobs, ids, strict=True)
    ]
