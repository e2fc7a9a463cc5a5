"""What a running task can see of its job: its id, attempt, progress reports, a fenced
transaction, and whether its cancellation was asked."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from app.errors import Cancelled, LeaseLost
from app.ledger import jobs as ledger
from app.ledger import workflows
from app.ledger.engines import sync_engine
from app.ledger.jobs import Token
from app.settings import get_settings

_current = threading.local()


@dataclass
class JobContext:
    """The running job, as its task sees it."""

    token: Token
    task: str
    max_attempts: int
    worker_id: str
    payload_json: str = "{}"
    trace_context: str | None = None  # what its run span continues (see app.tracing)
    result: Any = None
    effects: Connection | None = field(default=None, repr=False)
    started: float = field(default_factory=time.monotonic, repr=False)
    _last_progress: int = field(default=-1, repr=False)
    # Set when an operator asked the job to stop (the worker's watcher, or a progress report).
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    # When the task's thread is interrupted if it has not stopped (monotonic clock).
    cancel_deadline: float | None = field(default=None, repr=False)
    # The thread running the task and whether it is inside it now, under `guard`: an
    # interruption may only land while the task runs (see app.execution.cancels).
    thread_id: int | None = field(default=None, repr=False)
    in_task: bool = field(default=False, repr=False)
    interrupted: bool = field(default=False, repr=False)
    guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def job_id(self) -> str:
        return str(self.token.job_id)

    @property
    def attempt(self) -> int:
        return self.token.attempt

    def client_id(self) -> str | None:
        """The API key that enqueued this job, as the ledger holds it; None for an operator's job
        (the CLI, Python, a schedule). Raises LeaseLost when the job is no longer in the ledger."""
        with sync_engine().connect() as conn:
            found, client = ledger.job_client(conn, self.token.job_id)
        if not found:
            raise LeaseLost(f"job {self.job_id} is no longer in the ledger")
        return client

    def upstream_results(self) -> dict[str, Any]:
        """What the steps this workflow step comes after returned, by step name (they have all
        succeeded, or the step would not run); {} for a job that is no workflow's step."""
        with sync_engine().connect() as conn:
            found = workflows.upstream_results(conn, self.token.job_id)
        return {step: result for step, (_, result) in found.items()}

    @property
    def cancel_requested(self) -> bool:
        """Whether an operator asked this job to stop: a long task checks it between steps and
        returns (or calls `raise_if_cancelled()`) before CANCEL_GRACE_SECONDS interrupt it."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise Cancelled when this job's cancellation was asked; the job then ends cancelled."""
        if self._cancel.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled while running")

    def ask_to_cancel(self) -> bool:
        """For the worker: the job's cancellation was asked. True the first time, which starts
        the grace after which the task's thread is interrupted."""
        with self.guard:
            if self._cancel.is_set():
                return False
            self.cancel_deadline = time.monotonic() + get_settings().cancel_grace_seconds
            self._cancel.set()
            return True

    def progress(self, percent: float) -> None:
        """Record progress (0-100) and renew the lease; raises LeaseLost if the job is no longer
        ours, and Cancelled once its cancellation was asked."""
        self.raise_if_cancelled()
        value = max(0, min(100, int(percent)))
        if value == self._last_progress:
            return
        with sync_engine().begin() as conn:
            owned, cancel = ledger.report_progress(conn, self.token, value, get_settings().lease_seconds)
        if not owned:
            raise LeaseLost(f"job {self.job_id} attempt {self.attempt} lost its lease")
        self._last_progress = value
        if cancel:
            self.ask_to_cancel()
            self.raise_if_cancelled()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection whose writes commit together with this job's success, or not at all.

        A worker that lost its lease cannot commit them: the success write is fenced, and
        the whole transaction rolls back with it. That makes database effects exactly-once.
        """
        if self.effects is None:
            conn = sync_engine().connect()
            conn.begin()
            self.effects = conn
        yield self.effects

    def discard_effects(self) -> None:
        if self.effects is not None:
            conn, self.effects = self.effects, None
            try:
                conn.rollback()
            except Exception:
                # An interruption may have cut a statement short: the connection cannot be
                # trusted, so the pool gets a new one (the transaction is gone either way).
                conn.invalidate()
            conn.close()


def set_current(ctx: JobContext | None) -> None:
    _current.ctx = ctx


def current_job() -> JobContext:
    """The job the calling worker thread is running."""
    ctx: JobContext | None = getattr(_current, "ctx", None)
    if ctx is None:
        raise RuntimeError("current_job() called outside a running job")
    return ctx


def peek_current() -> JobContext | None:
    ctx: JobContext | None = getattr(_current, "ctx", None)
    return ctx
