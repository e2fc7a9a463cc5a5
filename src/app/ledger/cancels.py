"""Cancelling a job: at once when it has not started, by asking its worker when it runs.

An operator's request on a running job is a flag (`cancel_requested_at`) and a NOTIFY on
`conveyor_cancel` with the job's id; the worker running it listens, and polls its running
jobs' flags as well, then ends the attempt with `finish_cancelled`, fenced like every worker
write: a success and a cancellation of one attempt cannot both be written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async
from app.ledger.jobs import Token


async def cancel(conn: AsyncConnection, job_id: UUID) -> bool:
    """queued|retrying → cancelled; False when the job is in another state (or missing)."""
    return bool((await run_async(conn, queries.CANCEL, {"id": job_id})).rows)


async def request(conn: AsyncConnection, job_id: UUID) -> bool:
    """Ask a running job to stop (its worker is woken when the transaction commits); False when
    the job is not running (or missing). Asking again keeps the first request's time."""
    return bool((await run_async(conn, queries.REQUEST_CANCEL, {"id": job_id})).rows)


def listen(conn: psycopg.Connection[Any]) -> None:
    """Make an autocommit connection receive the requests (`conn.notifies()`, the job id as payload)."""
    conn.execute(queries.LISTEN_FOR_CANCELS)


def requested(conn: SyncConnection, job_ids: Sequence[UUID]) -> set[UUID]:
    """Of these jobs, the running ones whose cancellation was asked."""
    if not job_ids:
        return set()
    return {row[0] for row in run(conn, queries.CANCEL_REQUESTS, {"ids": list(job_ids)}).rows}


def finish(conn: SyncConnection, token: Token, reason: str) -> bool:
    """Fenced: running → cancelled, the attempt recorded as cancelled; False when the attempt
    no longer owned the job (it succeeded, failed or lost its lease first)."""
    params = {"id": token.job_id, "run": token.run, "attempt": token.attempt, "error": reason}
    return bool(run(conn, queries.FINISH_CANCELLED, params).rows)
