"""Cancelling running jobs in a worker process: learning of the requests, telling the tasks, and
interrupting those that do not stop within CANCEL_GRACE_SECONDS.

One thread per process listens on `conveyor_cancel` (an operator's request notifies it with
the job's id when it commits) and, while the process runs jobs, polls their flags every
second as well, so a notification lost while its connection was away costs a second, not the
cancellation. A job it learns of is told (`job.cancel_requested`); past its grace, Cancelled
is raised in the task's thread asynchronously, as Dramatiq's TimeLimit raises its exception:
it lands when the thread next runs Python code, so a blocking system call is interrupted only
when it returns.

An interruption must land inside the task and nowhere else (not in the success write, not in
the thread's next job): `run_task` marks the task's span under the job's guard, the watcher
interrupts only inside it, and a task left while an interruption was pending ends Cancelled
with the pending exception cleared.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from dramatiq.middleware import raise_thread_exception

from app.errors import Cancelled
from app.jobs.context import JobContext
from app.ledger import cancels
from app.ledger.connections import own_connection
from app.ledger.urls import own_conninfo
from app.logs import Outage, get_logger
from app.settings import get_settings

log = get_logger("conveyor.worker")
T = TypeVar("T")

# How often the running jobs' flags are read, besides the NOTIFY: the bound on how late a
# worker learns of a request whose notification it missed.
POLL_SECONDS = 1.0

# The jobs a process holds now (claimed or running), for the watcher.
Running = Callable[[], list[JobContext]]


def run_task(ctx: JobContext, call: Callable[[], T]) -> T:
    """Run `call` (the task) on this thread as the span an interruption may land in."""
    with ctx.guard:
        ctx.thread_id = threading.get_ident()
        ctx.in_task = True
    try:
        ctx.raise_if_cancelled()  # asked while the job waited for this thread
        return call()
    finally:
        _leave(ctx)


def _leave(ctx: JobContext) -> None:
    with ctx.guard:
        ctx.in_task = False
        interrupted = ctx.interrupted
    if interrupted:
        # The task returned or failed just as it was interrupted: the exception may still be
        # pending, to land in whatever this thread runs next. It is cleared, and the job ends
        # cancelled as the interruption meant.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
        raise Cancelled(f"job {ctx.job_id} was interrupted: it did not stop within its grace")


def interrupt(ctx: JobContext) -> bool:
    """Raise Cancelled in the thread running the job's task, once, and only while it runs it."""
    with ctx.guard:
        if not ctx.in_task or ctx.interrupted or ctx.thread_id is None:
            return False
        ctx.interrupted = True
        raise_thread_exception(ctx.thread_id, Cancelled)  # type: ignore[no-untyped-call]
    return True


class CancelWatcher:
    """The thread that learns of cancel requests for this process's jobs and enforces the grace."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="conveyor-cancels", daemon=True)
        self._outage = Outage(log, "database (the worker's cancel listener)")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # Not joined: a worker's shutdown does not wait for the listener's current wait, and
        # the process's exit closes its connection.
        self._stop.set()

    def _loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        pause = 0.2
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = own_connection(own_conninfo())
                    cancels.listen(conn)
                self.round(conn)
            except Exception as error:
                self._outage.failed(error)
                if conn is not None:
                    conn.close()
                conn = None
                # Deadlines are the worker's own clock: they hold while the database is away.
                self.interrupt_overdue({ctx.token.job_id: ctx for ctx in self.running()})
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)
            else:
                self._outage.recovered()
                pause = 0.2
        if conn is not None:
            conn.close()

    def round(self, conn: psycopg.Connection[Any]) -> None:
        """Poll the flags of the jobs held now, interrupt the overdue, then wait for
        notifications until the next poll or the nearest deadline."""
        held = {ctx.token.job_id: ctx for ctx in self.running()}
        if held:
            for job_id in cancels.requested(conn, list(held)):
                self._tell(held[job_id])
        self.interrupt_overdue(held)
        for notification in conn.notifies(timeout=self._wait(held), stop_after=None):
            self._notified(notification.payload)
            if self._stop.is_set():
                return

    def _notified(self, payload: str) -> None:
        try:
            job_id = UUID(payload)
        except ValueError:
            return
        for ctx in self.running():
            if ctx.token.job_id == job_id:
                self._tell(ctx)

    def _tell(self, ctx: JobContext) -> None:
        if ctx.ask_to_cancel():
            log.info(
                "job cancellation asked: the task is told, and interrupted after its grace",
                job_id=ctx.job_id,
                grace_s=get_settings().cancel_grace_seconds,
            )

    def interrupt_overdue(self, held: dict[UUID, JobContext]) -> None:
        now = time.monotonic()
        for ctx in held.values():
            if ctx.cancel_deadline is not None and now >= ctx.cancel_deadline and interrupt(ctx):
                log.warning(
                    "job did not stop within its grace after cancellation: interrupted", job_id=ctx.job_id
                )

    def _wait(self, held: dict[UUID, JobContext]) -> float:
        """Until the next poll, or sooner when a grace runs out before it."""
        now = time.monotonic()
        deadlines = [
            ctx.cancel_deadline - now
            for ctx in held.values()
            if ctx.cancel_deadline is not None and ctx.cancel_deadline > now and not ctx.interrupted
        ]
        return min([POLL_SECONDS, *deadlines]) + 0.005
