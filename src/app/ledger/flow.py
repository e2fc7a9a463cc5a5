"""Flow control in the ledger: limited claims, jobs held back, the relay's take per key, paused queues,
and what a queue re-made with another type lost (published again).

A task's limits are copied onto each of its jobs when the job is made (`Flow`), so the claim
and the relay read columns, never the payload. See docs/flow.md for how the pieces fit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any
from uuid import UUID

import psycopg

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, on_a_standby, run, run_async
from app.ledger.jobs import Claim, Doorbell, Publishable, Token


def claim_limited(
    conn: psycopg.Connection[Any], worker_id: str, lease_seconds: float, bells: Sequence[Doorbell]
) -> tuple[list[Claim | None], set[UUID]]:
    """Claim jobs within their limits, in one transaction of `conn` (autocommit): the
    concurrency keys are locked first, then the claim counts what runs. For each doorbell its
    claim or None, and the jobs held back (they wait, for a limit or a paused queue: marked
    unpublished, due when their rate window ends) in the same transaction. Jobs without limits
    may be asked too: they are held back only when their queue is paused (or not due).

    The transaction's four statements (begin, lock, claim, commit) go in one pipeline: one round
    trip. The server still runs them one after the other, so the claim's snapshot is taken once
    the locks are held."""
    ids = [bell.job_id for bell in bells]
    params = {"ids": ids, "tasks": [b.task for b in bells], "worker_id": worker_id, "lease": lease_seconds}
    try:
        with conn.pipeline(), conn.transaction():
            conn.execute(queries.LOCK_FLOW_KEYS, {"ids": ids}, prepare=True)
            claimed = conn.execute(queries.CLAIM_LIMITED, params, prepare=True)
    except psycopg.errors.ReadOnlySqlTransaction as error:
        conn.close()
        raise on_a_standby(error) from error
    rows = claimed.fetchall()
    held = {r[0] for r in rows if r[1] is None}
    claims = {
        (r[0], r[4]): Claim(Token(r[0], r[1], r[2]), r[4], r[3], r[5], r[7]) for r in rows if r[1] is not None
    }
    return [claims.pop((bell.job_id, bell.task), None) for bell in bells], held


def take_limited(
    conn: SyncConnection, limit: int, keys: Collection[tuple[str, str]] | None = None
) -> list[Publishable]:
    """Due jobs of tasks with limits that may start, each key's first first, marked published in
    the caller's transaction: of every key, or of the (task, concurrency key) pairs in `keys`."""
    named = sorted(keys or ())
    params = {
        "limit": limit,
        "every": keys is None,
        "tasks": [task for task, _ in named],
        "keys": [key for _, key in named],
    }
    rows = run(conn, queries.TAKE_LIMITED, params, prepare=True).rows
    return [Publishable(r[0], r[1], r[2], r[4], priority=r[3], trace_context=r[5]) for r in rows]


async def pause_queue(conn: AsyncConnection, queue: str) -> None:
    await run_async(conn, queries.PAUSE_QUEUE, {"queue": queue})


async def resume_queue(conn: AsyncConnection, queue: str) -> None:
    await run_async(conn, queries.RESUME_QUEUE, {"queue": queue})


def pause_queue_sync(conn: SyncConnection, queue: str) -> None:
    run(conn, queries.PAUSE_QUEUE, {"queue": queue})


def resume_queue_sync(conn: SyncConnection, queue: str) -> None:
    run(conn, queries.RESUME_QUEUE, {"queue": queue})


async def hold_republishable(
    conn: AsyncConnection, queue: str, *, jobs: bool, dead: bool, dead_ttl_seconds: float
) -> list[UUID]:
    """Lock, until the transaction ends, the jobs of `queue` whose messages deleting its queues
    could take along (see `hold_republishable` in queries.sql): no relay publishes them meanwhile.
    Their ids, for republish_queue."""
    params = {"queue": queue, "jobs": jobs, "dead": dead, "dead_ttl": dead_ttl_seconds}
    return [
        UUID(str(job_id)) for (job_id,) in (await run_async(conn, queries.HOLD_REPUBLISHABLE, params)).rows
    ]


async def republish_queue(
    conn: AsyncConnection,
    queue: str,
    *,
    jobs: bool,
    dead: bool,
    dead_ttl_seconds: float,
    held: Sequence[UUID] = (),
    apply: bool = True,
) -> tuple[int, int]:
    """Publish again what a re-made queue lost (see `republish_queue` in queries.sql): of the jobs
    `held` since before the delete (hold_republishable, in this transaction), the published,
    unclaimed ones (`jobs`) and the dead ones' copies (`dead`); the relay is woken at commit. How
    many of each; with `apply` False, how many it would be of all the queue's, changing nothing."""
    params: dict[str, Any] = {"queue": queue, "jobs": jobs, "dead": dead, "dead_ttl": dead_ttl_seconds}
    if not apply:
        row = (await run_async(conn, queries.COUNT_REPUBLISHABLE, params)).rows[0]
        return int(row[0]), int(row[1])
    marked = (await run_async(conn, queries.REPUBLISH_QUEUE, {**params, "held": list(held)})).rows
    await run_async(conn, queries.NOTIFY_RELAY)
    dead_copies = sum(1 for (is_dead,) in marked if is_dead)
    return len(marked) - dead_copies, dead_copies
