"""Tasks for fault tests and soak runs; registered only when DIAGNOSTIC_TASKS=true.

They are never public, whatever the setting: one of them ends its worker process on purpose,
so no client may ask for them. The API refuses them (`422` unknown task) and does not list
them; workers run them, and Python code enqueues them (`effect.enqueue_sync(...)`).

Each execution leaves rows in `diagnostic_effects`, keyed by job id, run and attempt:

- `started`: written at once, outside any transaction, when an attempt begins. Counting
  them counts executions, including the ones a crash or a lost lease threw away.
- `effect`: written through `job.transaction()`, so it commits only together with the
  fenced success write. Exactly one per succeeded job, whatever failed on the way.
- `side_effect`: written outside the transaction, like an email or an HTTP call. A worker
  that dies between the write and the ledger's success write leaves it behind and the
  next attempt writes it again: at least once, never exactly once.

The table is created on first use rather than by a migration: it exists for tests and
soak runs, and a production ledger should not carry it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import Field
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import TransientError
from app.jobs.context import JobContext
from app.jobs.registry import Payload, Queue, task
from app.ledger.engines import sync_engine
from app.logs import get_logger

log = get_logger("conveyor.diagnostics")

EFFECTS_TABLE = "diagnostic_effects"
# Exit status of a worker process that a diagnostics task ended on purpose.
CRASH_EXIT_CODE = 86
# How long a diagnostics task keeps retrying its own writes while the database refuses
# connections: the fault tests measure the pipeline, not how busy a shared server is.
WRITE_RETRY_SECONDS = 30.0
# Serialises CREATE TABLE IF NOT EXISTS across worker processes (it races otherwise).
_DDL_LOCK_KEY = 0x636F6E76  # "conv"

CREATE_EFFECTS = text(
    f"""
    CREATE TABLE IF NOT EXISTS {EFFECTS_TABLE} (
        id BIGSERIAL PRIMARY KEY,
        job_id UUID NOT NULL,
        run INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        worker_id TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    )
    """
)
INDEX_EFFECTS = text(f"CREATE INDEX IF NOT EXISTS ix_{EFFECTS_TABLE}_job ON {EFFECTS_TABLE} (job_id, kind)")
INSERT_EFFECT = text(
    f"""
    INSERT INTO {EFFECTS_TABLE} (job_id, run, attempt, kind, pid, worker_id)
    VALUES (:job_id, :run, :attempt, :kind, :pid, :worker_id)
    """
)

_table_ready = False
_table_lock = threading.Lock()


class EffectPayload(Payload):
    sleep_seconds: float = Field(default=0.0, ge=0, le=600)
    # Report progress this often while sleeping; None leaves lease renewal to the heartbeat.
    progress_every: float | None = Field(default=None, gt=0, le=60)
    # Kill the worker process after the effect is written and before the ledger records it.
    crash_on_attempt: int | None = Field(default=None, ge=1)
    exit_always: bool = False


@task(EffectPayload, queue=Queue.DEFAULT, max_attempts=3, time_limit_seconds=60, public=False)
def effect(payload: EffectPayload, job: JobContext) -> dict[str, Any]:
    """Write one effect row in the job's fenced transaction: exactly once per succeeded job."""
    _record(job, "started")
    _sleep(payload, job)
    _retrying(lambda: _insert_in_transaction(job), undo=lambda: _forget_effects(job))
    _maybe_crash(payload, job)
    return {"attempt": job.attempt, "pid": os.getpid()}


@task(EffectPayload, queue=Queue.DEFAULT, max_attempts=3, time_limit_seconds=60, public=False)
def side_effect(payload: EffectPayload, job: JobContext) -> dict[str, Any]:
    """Write one effect row outside the job's transaction: at least once, like an email."""
    _record(job, "started")
    _sleep(payload, job)
    _record(job, "side_effect")
    _maybe_crash(payload, job)
    return {"attempt": job.attempt, "pid": os.getpid()}


def _sleep(payload: EffectPayload, job: JobContext) -> None:
    if payload.progress_every is None:
        time.sleep(payload.sleep_seconds)
        return
    deadline = time.monotonic() + payload.sleep_seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, payload.progress_every))
        done = payload.sleep_seconds - max(deadline - time.monotonic(), 0.0)
        job.progress(99 * done / payload.sleep_seconds)


def _maybe_crash(payload: EffectPayload, job: JobContext) -> None:
    if payload.exit_always or payload.crash_on_attempt == job.attempt:
        log.error("diagnostics: ending the worker process on purpose", pid=os.getpid())
        os._exit(CRASH_EXIT_CODE)


def _record(job: JobContext, kind: str) -> None:
    # Before taking a connection: waiting for a second one while holding the first
    # deadlocks a pool that every task thread is doing the same with.
    _retrying(_ensure_table)

    def write() -> None:
        with sync_engine().begin() as conn:
            _insert(conn, job, kind)

    _retrying(write)


def _insert_in_transaction(job: JobContext) -> None:
    with job.transaction() as conn:
        _insert(conn, job, "effect")


def _forget_effects(job: JobContext) -> None:
    """Drop a transaction whose connection broke; the next try opens a new one."""
    conn, job.effects = job.effects, None
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _retrying(write: Callable[[], None], undo: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + WRITE_RETRY_SECONDS
    pause = 0.1
    while True:
        try:
            write()
            return
        except (OperationalError, PoolTimeout):
            if undo is not None:
                with contextlib.suppress(Exception):
                    undo()
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 1.0)


def _insert(conn: Connection, job: JobContext, kind: str) -> None:
    params = {
        "job_id": job.token.job_id,
        "run": job.token.run,
        "attempt": job.attempt,
        "kind": kind,
        "pid": os.getpid(),
        "worker_id": job.worker_id,
    }
    conn.execute(INSERT_EFFECT, params)


def _ensure_table() -> None:
    global _table_ready
    if _table_ready:
        return
    with _table_lock:
        if _table_ready:
            return
        with sync_engine().begin() as conn:
            # Looked up without a lock first: a worker frozen (SIGSTOP) inside this transaction
            # would otherwise hold the lock, and every other worker's first effect would wait.
            if conn.execute(text("SELECT to_regclass('diagnostic_effects') IS NULL")).scalar_one():
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK_KEY})
                conn.execute(CREATE_EFFECTS)
                conn.execute(INDEX_EFFECTS)
        _table_ready = True


class ParentPayload(Payload):
    children: int = Field(default=1, ge=0, le=10)
    # Fail (transiently) after making the children, on this attempt.
    fail_on_attempt: int | None = Field(default=None, ge=1)


@task(ParentPayload, queue=Queue.DEFAULT, max_attempts=3, time_limit_seconds=60, public=False)
def parent(payload: ParentPayload, job: JobContext) -> dict[str, Any]:
    """Make child jobs inside the job's transaction: they exist only if this attempt succeeds."""
    from app.tasks.example import echo

    with job.transaction() as conn:
        made = [
            str(echo.enqueue_sync({"message": f"child {n} of attempt {job.attempt}"}, session=conn).id)
            for n in range(payload.children)
        ]
    if payload.fail_on_attempt == job.attempt:
        raise TransientError(f"parent: failing attempt {job.attempt} after making {len(made)} children")
    return {"children": made, "attempt": job.attempt}
