"""The worker's writes to the ledger, each retried while the database is briefly away.

Claims are made by the consumer threads, a burst of messages per statement, each consumer
on a connection of its own. Successes from all of a process's threads are grouped (see
`batcher`): one statement and one commit per batch on a connection of their own. A success that carries
the task's own transaction (`job.transaction()`) commits with it instead. Retries and
burials are rare and go one by one through the shared pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.execution.batcher import Batcher
from app.jobs.context import JobContext
from app.jobs.registry import limited_tasks, retry_delay
from app.ledger import cancels, flow, workers, workflows
from app.ledger import jobs as ledger
from app.ledger.connections import own_connection
from app.ledger.engines import autocommit_engine, sync_engine
from app.ledger.jobs import Claim, Doorbell, Token
from app.ledger.urls import own_conninfo
from app.logs import Outage, first_line, get_logger
from app.settings import get_settings

log = get_logger("conveyor.worker")
T = TypeVar("T")

# How long a worker keeps retrying a ledger write while the database is unreachable (at
# least twice DB_FAILOVER_SECONDS: a failover is ridden out, not given up on). Past it the
# lease runs out and the relay hands the job to another attempt.
DB_RETRY_SECONDS = 60.0


def db_retry_seconds() -> float:
    return max(DB_RETRY_SECONDS, 2 * get_settings().db_failover_seconds)


DATABASE_OUTAGE = Outage(log, "database (the worker's ledger writes)")


def with_db_retry(fn: Callable[[], T], *, what: str, job_id: UUID | None = None) -> T:
    """`fn()`, tried again with backoff while the database is down or every connection is busy."""
    deadline = time.monotonic() + db_retry_seconds()
    pause = 0.1
    while True:
        try:
            result = fn()
        except (OperationalError, PoolTimeout, psycopg.OperationalError) as error:
            if time.monotonic() > deadline:
                raise
            DATABASE_OUTAGE.failed(error, during=what, job_id=str(job_id))
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        else:
            DATABASE_OUTAGE.recovered()
            return result


def claim_all(
    conn: psycopg.Connection[Any], worker_id: str, lease: float, bells: Sequence[Doorbell]
) -> tuple[list[Claim | None], set[UUID]]:
    """Claim a burst: jobs of tasks without limits with the plain claim, as before there were
    limits (one statement); then the jobs of tasks with limits, and whatever the plain claim
    left out, with the claim that counts limits (the ledger's row decides, not this process's
    registry). For each doorbell its claim or None, and the jobs held back: not claimed, but
    waiting (a paused queue, a limit), their message spent, left for the relay to publish."""
    limited = limited_tasks()
    plain = [bell for bell in bells if bell.task not in limited]
    claims: dict[int, Claim | None] = {}
    if plain:
        claims.update(zip(map(id, plain), ledger.claim(conn, worker_id, lease, plain), strict=True))
    counted = [bell for bell in bells if claims.get(id(bell)) is None]
    if not counted:
        return [claims[id(bell)] for bell in bells], set()
    second, held = flow.claim_limited(conn, worker_id, lease, counted)
    claims.update(zip(map(id, counted), second, strict=True))
    return [claims[id(bell)] for bell in bells], held


class LedgerWrites:
    """One worker process's writes; `start` after the process forked, `close` at shutdown."""

    def __init__(self) -> None:
        self.worker_id = ""
        self._own = threading.local()
        self._own_connections: list[psycopg.Connection[Any]] = []
        self._claims: Batcher[Doorbell, Claim | None] | None = None
        self._successes: Batcher[tuple[Token, str], bool] | None = None

    def start(self, worker_id: str) -> None:
        settings = get_settings()
        self.worker_id = worker_id
        lease = settings.lease_seconds

        def claim(conn: psycopg.Connection[Any], ids: Any) -> list[Claim | None]:
            return claim_all(conn, worker_id, lease, ids)[0]

        retry = db_retry_seconds()
        self._claims = Batcher("claims", own_conninfo(), claim, outage=DATABASE_OUTAGE, retry_seconds=retry)
        self._successes = Batcher(
            "successes",
            own_conninfo(),
            ledger.succeed,
            outage=DATABASE_OUTAGE,
            retry_seconds=retry,
        )

    def close(self) -> None:
        for batcher in (self._claims, self._successes):
            if batcher is not None:
                batcher.close()
        for conn in self._own_connections:
            conn.close()

    def _batchers(self) -> tuple[Batcher[Doorbell, Claim | None], Batcher[tuple[Token, str], bool]]:
        if self._claims is None or self._successes is None:
            self.start(self.worker_id)  # a broker used without `dramatiq`'s worker boot (tests)
        assert self._claims is not None
        assert self._successes is not None
        return self._claims, self._successes

    def claim(self, bell: Doorbell) -> Claim | None:
        """One message's claim, grouped with other threads' (brokers without the claiming consumer)."""
        return self._batchers()[0].submit(bell)

    def claim_burst(self, bells: Sequence[Doorbell]) -> tuple[list[Claim | None], set[UUID]]:
        """Claim a consumer's burst on that thread's own connection: one statement, one commit
        (and one more for a burst with jobs held back, see `claim_all`). Raises when the
        database is away (the consumer holds the messages and tries again)."""
        conn: psycopg.Connection[Any] | None = getattr(self._own, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = own_connection(own_conninfo())
                self._own.conn = conn
                self._own_connections.append(conn)
            claims = claim_all(conn, self.worker_id, get_settings().lease_seconds, bells)
        except psycopg.OperationalError as error:
            if conn is not None:
                conn.close()
            DATABASE_OUTAGE.failed(error, during="claim")
            raise
        except psycopg.Error:
            if conn is not None and conn.broken:
                conn.close()
            log.exception("a burst could not be claimed; its messages wait and are tried again")
            raise
        DATABASE_OUTAGE.recovered()
        return claims

    def job_task(self, job_id: UUID) -> tuple[str, str] | None:
        """The (task, state) the ledger holds for a job whose message could not claim it."""
        with autocommit_engine().connect() as conn:
            return ledger.job_task(conn, job_id)

    def succeed(self, ctx: JobContext, result_json: str, recorded: Callable[[bool], None]) -> None:
        """Record a success; `recorded(owned)` runs once it is written (False: fenced, the attempt
        had lost its lease). With the task's own transaction (`job.transaction()`) both commit
        now, on this thread; otherwise the success joins the next batch and `recorded` runs on
        the batcher's thread, while this thread goes on to its next job."""
        if ctx.effects is not None:
            owned = self._succeed_with_effects(ctx, result_json)
            if owned is not None:
                recorded(owned)
            return
        job_id = ctx.token.job_id

        def written(owned: Any, error: BaseException | None) -> None:
            if error is None:
                recorded(bool(owned))
            else:
                log.error(
                    "could not record the outcome; the lease will expire and it will rerun",
                    job_id=str(job_id),
                    error=first_line(error),
                )

        self._batchers()[1].submit_nowait((ctx.token, result_json), written)

    def _succeed_with_effects(self, ctx: JobContext, result_json: str) -> bool | None:
        """Whether the attempt owned the job; None when the commit failed and a retry is recorded."""
        conn = ctx.effects
        assert conn is not None
        try:
            owned = ledger.succeed(conn, [(ctx.token, result_json)])[0]
            if owned:
                conn.commit()
                conn.close()
                ctx.effects = None
                return True
        except DBAPIError:
            log.exception("could not commit the job's effects; it will be retried")
            ctx.discard_effects()
            delay = retry_delay(ctx.task, ctx.attempt)
            self.retry(ctx.token, "database error while committing the job's effects", delay)
            return None
        ctx.discard_effects()
        return False

    def retry(self, token: Token, error: str, delay_seconds: float) -> str | None:
        """The job's new state: retrying, or cancelled when that was asked; None: fenced."""

        def write(conn: Any) -> str | None:
            state = ledger.retry(conn, token, error, delay_seconds)
            if state == "cancelled":
                workflows.cancel_downstream(conn, [token.job_id])
            return state

        return self._single(write, token, None, together=True)

    def bury(self, token: Token, error: str) -> bool:
        """Fenced: running → dead, and the workflow steps after it cancelled, in one transaction."""

        def write(conn: Any) -> bool:
            buried = ledger.bury(conn, token, error)
            if buried:
                workflows.cancel_downstream(conn, [token.job_id])
            return buried

        return self._single(write, token, False, together=True)

    def cancelled(self, token: Token, reason: str) -> bool:
        """Fenced: the attempt stopped because its cancellation was asked; the job ends cancelled
        (and the workflow steps after it with it)."""

        def write(conn: Any) -> bool:
            done = cancels.finish(conn, token, reason)
            if done:
                workflows.cancel_downstream(conn, [token.job_id])
            return done

        return self._single(write, token, False, together=True)

    def _single(self, write: Callable[[Any], T], token: Token, failed: T, *, together: bool = False) -> T:
        """One write, retried while the database is away; `together`: its statements commit as
        one transaction (an outcome and what it does to the workflow steps after it)."""

        def attempt() -> T:
            if together:
                with sync_engine().begin() as conn:
                    return write(conn)
            with autocommit_engine().connect() as conn:
                return write(conn)

        try:
            return with_db_retry(attempt, what="finish", job_id=token.job_id)
        except Exception:
            log.exception("could not record the outcome; the lease will expire and it will rerun")
            return failed

    def unclaim(self, tokens: Sequence[Token]) -> int:
        """Undo claims that never started, at once (the relay publishes their jobs again)."""
        with sync_engine().begin() as conn:
            undone = ledger.unclaim(conn, self.worker_id, tokens)
            workflows.cancel_downstream(conn, [token.job_id for token in tokens])
            return undone

    def hand_back(self, started: list[UUID], not_started: list[Token]) -> int:
        """At shutdown: give unfinished jobs back to the queue and mark the worker stopped."""
        with sync_engine().begin() as conn:
            handed_back = ledger.release(
                conn, self.worker_id, started, "worker shut down before the attempt finished"
            )
            handed_back += ledger.unclaim(conn, self.worker_id, not_started)
            # A job handed back dead or cancelled cancels the workflow steps after it.
            workflows.cancel_downstream(conn, [*started, *(token.job_id for token in not_started)])
            workers.stop(conn, self.worker_id)
        return handed_back
