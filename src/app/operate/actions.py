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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from app.errors import AlreadyInFlight, InvalidTransition, JobNotFound, WorkflowEnded
from app.ledger import cancels, unique, workflows
from app.ledger import jobs as ledger
from app.ledger.jobs import DeadRun
from app.ledger.schema import TERMINAL_STATES
from app.logs import get_logger
from app.operate import audit
from app.operate import workflows as workflow_reads
from app.operate.audit import Actor

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# Big enough that 100,000 dead jobs take 200 short transactions; small enough that each
# holds its row locks for milliseconds.
BATCH = 500

BulkAction = Literal["replay", "discard"]
# How a cancel went: the job will not run (`cancelled`), or its worker was asked to stop it.
CancelOutcome = Literal["cancelled", "requested"]
# A job that changes state between the statements of one cancel (claimed, or retried, just
# then) is asked again; a few rounds settle any such race.
CANCEL_ROUNDS = 3
Progress = Callable[[int], None]

log = get_logger("conveyor.operate")


async def replay(conn: AsyncConnection, job_id: UUID) -> DeadRun:
    """dead → queued as a new run; raises InvalidTransition (not dead) or JobNotFound."""
    done = await _replay_dead(conn, ids=[job_id], limit=1)
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


async def cancel(conn: AsyncConnection, job_id: UUID) -> CancelOutcome:
    """queued|retrying → cancelled at once; running → its worker is asked to stop it (it ends
    cancelled unless it finishes first). Raises InvalidTransition (finished) or JobNotFound."""
    state = "?"
    for _ in range(CANCEL_ROUNDS):
        if await cancels.cancel(conn, job_id):
            await workflows.cancel_downstream_async(conn, [job_id])
            return "cancelled"
        if await cancels.request(conn, job_id):
            return "requested"
        state = await _state_of(conn, job_id)
        if state in TERMINAL_STATES:
            break
    raise InvalidTransition(job_id, state, "cancel", "queued, retrying or running")


@dataclass(frozen=True, slots=True)
class WorkflowCancel:
    """What cancelling a workflow did: steps cancelled at once, running steps asked to stop."""

    cancelled: int
    requested: int


async def cancel_workflow(
    conn: AsyncConnection, workflow_id: UUID, actor: Actor, *, client_id: str | None = None
) -> WorkflowCancel:
    """Every step of the workflow that has not finished: cancelled when it has not started
    (waiting, queued, retrying), its worker asked to stop it when it runs; audited in the same
    transaction. `client_id`: only that client's workflow. Raises WorkflowNotFound, or
    WorkflowEnded when every step had finished."""
    found = await workflow_reads.get(conn, workflow_id, client_id)
    cancelled = await workflows.cancel_steps(conn, workflow_id)
    requested = await workflows.request_cancel_steps(conn, workflow_id)
    if not cancelled and not requested:
        raise WorkflowEnded(workflow_id, found.state)
    detail = {"running": requested} if requested else None
    await audit.record(
        conn, actor, audit.Action.WORKFLOW_CANCEL, target=str(workflow_id), count=cancelled, detail=detail
    )
    return WorkflowCancel(cancelled, requested)


async def _replay_dead(
    conn: AsyncConnection, *, task: str | None = None, ids: Sequence[UUID] | None = None, limit: int
) -> list[DeadRun]:
    """Replay dead jobs; the workflow steps cancelled for them wait again, in the same transaction."""
    done = await ledger.replay_dead(conn, task=task, ids=ids, limit=limit)
    await workflows.revive_downstream_async(conn, [run.id for run in done])
    return done


async def _state_of(conn: AsyncConnection, job_id: UUID) -> str:
    state = await ledger.job_state(conn, job_id)
    if state is None:
        raise JobNotFound(job_id)
    return state


async def on_dead(
    conn: AsyncConnection, action: BulkAction, *, task: str | None = None, ids: Sequence[UUID] | None = None
) -> list[DeadRun]:
    """One batch of a bulk action, in the caller's transaction: at most BATCH jobs (or the given ids)."""
    act = _replay_dead if action == "replay" else ledger.discard_dead
    return await act(conn, task=task, ids=ids, limit=len(ids) if ids is not None else BATCH)


async def bulk(
    engine: AsyncEngine,
    action: BulkAction,
    *,
    task: str | None = None,
    up_to: int,
    progress: Progress | None = None,
    actor: Actor | None = None,
) -> list[DeadRun]:
    """Replay or discard up to `up_to` dead jobs (of one task, or all), oldest first, in batches.

    With an `actor`, one audit entry tells the total, in the last batch's transaction; a bulk
    action cut short by an error still records what its committed batches did."""
    act = _replay_dead if action == "replay" else ledger.discard_dead
    done: list[DeadRun] = []
    try:
        while True:
            async with engine.begin() as conn:
                batch = await act(conn, task=task, limit=max(0, min(BATCH, up_to - len(done))))
                last = len(batch) < BATCH or len(done) + len(batch) >= up_to
                if last and actor is not None:
                    await _record_bulk(conn, actor, action, task, len(done) + len(batch))
            done += batch
            if progress is not None:
                progress(len(batch))
            if last:
                return done
    except Exception as error:
        if actor is not None and done:
            await _record_cut_short(engine, actor, action, task, len(done), error)
        raise


async def _record_bulk(
    conn: AsyncConnection,
    actor: Actor,
    action: BulkAction,
    task: str | None,
    count: int,
    detail: dict[str, object] | None = None,
) -> None:
    verb = audit.Action.DEAD_REPLAY_ALL if action == "replay" else audit.Action.DEAD_DISCARD_ALL
    await audit.record(conn, actor, verb, count=count, detail={"task": task, **(detail or {})})


async def _record_cut_short(
    engine: AsyncEngine, actor: Actor, action: BulkAction, task: str | None, count: int, error: Exception
) -> None:
    """Best effort: the database that failed the batch may fail this too, and the error that
    cut the action short is the one to raise."""
    try:
        async with engine.begin() as conn:
            await _record_bulk(conn, actor, action, task, count, {"cut_short": type(error).__name__})
    except Exception:
        log.warning("the audit entry of a bulk action cut short was not written", action=action, count=count)
