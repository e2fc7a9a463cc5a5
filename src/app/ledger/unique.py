"""Who holds a job's unique key: the in-flight job that keeps another of its task from running."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from app.ledger import queries
from app.ledger.connections import AsyncConnection, run_async


@dataclass(frozen=True, slots=True)
class UniqueHolder:
    task: str
    job_id: UUID


async def holder_of(conn: AsyncConnection, job_id: UUID) -> UniqueHolder | None:
    """The queued, retrying or running job of the same task holding `job_id`'s unique key."""
    rows = (await run_async(conn, queries.UNIQUE_HOLDER_OF_JOB, {"id": job_id})).rows
    return UniqueHolder(rows[0][0], rows[0][1]) if rows else None
