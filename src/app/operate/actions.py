"""What an operator does to jobs: replay, cancel, discard, one job or in bulk; written once for
the API, the dashboard and the CLI.

Bulk actions work in batches of BATCH, one transaction each, so no lock is held for long
and a huge dead-letter queue never makes one giant transaction. A replay or discard also
records the dead run's copy in `<queue>.XQ` as stale, in the same transaction; the relay
takes such copies out in one pass (the ledger stays the truth meanwhile: a message for a
job that is no longer dead never runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from app.errors import AlreadyInFlight, InvalidTransition, JobNotFound
from app.ledger import jobs as ledger
from app.ledger import unique
from app.ledger.jobs import DeadRun

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# Big enough that 100,000 dead jobs take 200 short transactions; small enough that each
# holds its row locks for milliseconds.
BATCH = 500

BulkAction = Literal["replay", "discard"]
Progress = Callable[[int], None]


async def replay(conn: AsyncConnection, job_id: UUID) -> DeadRun:
    """dead → queued as a new run; raises InvalidTransition (not dead) or JobNotFound."""
    done = await ledger.replay_dead(conn, ids=[job_id], limit=1)
    if not done:
        state = await _state_of(conn, job_id)
        if state == "dead":  # another job holds its unique key while in flight
            holder = await unique.holder_of(conn, job_id)
            if holder is not None:
                raise AlreadyInFlight(holder.task, holder.job_id)
        raise InvalidTransition(job_id, state, "replay", "dead")
    return done[0]


async def discard(conn: AsyncConnection, job_id: UUID) -> DeadRun:
    """Delete a dead job and its history; raises InvalidTransition (not dead) or JobNotFound."""
    done = await ledger.discard_dead(conn, ids=[job_id], limit=1)
    if not done:
        raise InvalidTransition(job_id, await _state_of(conn, job_id), "discard", "dead")
    return done[0]


async def cancel(conn: AsyncConnection, job_id: UUID) -> None:
    """queued|retrying → cancelled; raises InvalidTransition (started or ended) or JobNotFound."""
    if not await ledger.cancel(conn, job_id):
        raise InvalidTransition(job_id, await _state_of(conn, job_id), "cancel", "queued or retrying")


async def _state_of(conn: AsyncConnection, job_id: UUID) -> str:
    state = await ledger.job_state(conn, job_id)
    if state is None:
        raise JobNotFound(job_id)
    return state


async def on_dead(
    conn: AsyncConnection, action: BulkAction, *, task: str | None = None, ids: Sequence[UUID] | None = None
) -> list[DeadRun]:
    """One batch of a bulk action, in the caller's transaction: at most BATCH jobs (or the given ids)."""
    act = ledger.replay_dead if action == "replay" else ledger.discard_dead
    return await act(conn, task=task, ids=ids, limit=len(ids) if ids is not None else BATCH)


async def bulk(
    engine: AsyncEngine,
    action: BulkAction,
    *,
    task: str | None = None,
    up_to: int,
    progress: Progress | None = None,
) -> list[DeadRun]:
    """Replay or discard up to `up_to` dead jobs (of one task, or all), oldest first, in batches."""
    act = ledger.replay_dead if action == "replay" else ledger.discard_dead
    done: list[DeadRun] = []
    while len(done) < up_to:
        async with engine.begin() as conn:
            batch = await act(conn, task=task, limit=min(BATCH, up_to - len(done)))
        done += batch
        if progress is not None:
            progress(len(batch))
        if len(batch) < BATCH:
            break
    return done
