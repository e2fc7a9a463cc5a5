"""Who holds a unique key: the in-flight job that a new job of its task with the same key meets.

The partial unique index `ux_jobs_unique_in_flight` decides (an INSERT leaves the row out);
these statements only name the job that holds the key, after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async
from app.ledger.jobs import NewJob


@dataclass(frozen=True, slots=True)
class UniqueHolder:
    task: str
    job_id: UUID


@dataclass(frozen=True, slots=True)
class Holder:
    """The queued, retrying or running job holding the unique key a new job asked for."""

    id: UUID
    state: str


async def holder_of(conn: AsyncConnection, job_id: UUID) -> UniqueHolder | None:
    """The queued, retrying or running job of the same task holding `job_id`'s unique key."""
    rows = (await run_async(conn, queries.UNIQUE_HOLDER_OF_JOB, {"id": job_id})).rows
    return UniqueHolder(rows[0][0], rows[0][1]) if rows else None


def _holder_params(jobs: Sequence[NewJob]) -> dict[str, object]:
    keyed = [j for j in jobs if j.unique_key is not None]
    return {
        "ids": [j.id for j in keyed],
        "tasks": [j.task for j in keyed],
        "keys": [j.unique_key for j in keyed],
    }


def holders(conn: SyncConnection, jobs: Sequence[NewJob]) -> dict[UUID, Holder]:
    """For jobs that `insert` left out: the in-flight job holding each one's unique key, by the
    left-out job's id. A job missing here was not refused for its unique key, or its holder
    has finished since (inserting it again may succeed). Call it after the insert, in a new
    statement: the index decides, this only names who holds the key."""
    rows = run(conn, queries.FIND_UNIQUE_HOLDERS, _holder_params(jobs)).rows
    return {row[0]: Holder(row[1], str(row[2])) for row in rows}


async def holders_async(conn: AsyncConnection, jobs: Sequence[NewJob]) -> dict[UUID, Holder]:
    rows = (await run_async(conn, queries.FIND_UNIQUE_HOLDERS, _holder_params(jobs))).rows
    return {row[0]: Holder(row[1], str(row[2])) for row in rows}
