"""Group commit for accepted jobs: concurrent requests share one INSERT and one commit.

Under load, requests that arrive while a batch is being written wait for the next batch,
so the database sees one statement per batch instead of one transaction per request. A
request is answered only after its batch committed: a 202 still means the job is durable.
With no load a batch is one job and nothing waits.

Requests share batches, so one client's bad row must not fail the others: a batch the
database refuses for what it holds (not for being away) is written again one row at a
time, and only the row that is refused again fails. A row whose unique key an in-flight job
holds is left out by the INSERT itself (the unique index decides); the rest of its batch
commits, and that request alone is answered with the holder (`enqueue.answer_held`: a duplicate,
or a refusal for a task that runs one job per client). Input is checked at the door so that
this is a second line, not the first. The queue of waiting requests is bounded: past
INTAKE_MAX_PENDING the API answers 503 at once instead of holding requests on a stalled
database.

This is the API's hottest path, so it talks to psycopg directly (a small pool of its own,
autocommit, prepared statement) rather than through SQLAlchemy's async layer. The relay is
woken by a NOTIFY that rides in a batch's own INSERT and is delivered at its commit. One
batch at a time carries it: a NOTIFY holds a database-wide lock until its transaction has
committed, so two would queue the writers' commits behind each other. A batch that commits
while the carrier is still in flight is covered by the carrier's later commit; one that
commits after it sends a NOTIFY of its own (rare under load). The relay takes every due row
when it wakes, and it sweeps on a timer as well.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.errors import JobRefused, LedgerUnavailable
from app.jobs.enqueue import Accepted, answer_held
from app.ledger import jobs as ledger
from app.ledger import unique
from app.ledger.engines import api_connect_args
from app.ledger.jobs import NewJob
from app.ledger.schema import JobState
from app.ledger.unique import Holder
from app.logs import Outage, first_line, get_logger
from app.settings import get_settings

log = get_logger("conveyor.intake")

# A job's future holds the in-flight job holding its unique key, or None once the job is stored.
Pending = tuple[NewJob, "asyncio.Future[Holder | None]"]
# What a job of a batch came to, when it was not stored: its key's holder, or the refusal.
Outcome = Holder | Exception
# Tries of a row refused for its unique key whose holder had finished by the time it was looked
# up: each try is a race lost to a job ending just then.
UNIQUE_ATTEMPTS = 5
UNAVAILABLE = "the job ledger is unavailable; nothing was stored, retry later"
# Errors that say the database is away or overloaded, not that a row is wrong.
UNAVAILABLE_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)
# The pool's reconnecting is given up and started again this many times in DB_FAILOVER_SECONDS.
RECONNECTS_PER_FAILOVER = 6


async def check_if_stirred(conn: AsyncConnection[Any]) -> None:
    """The pool's check before it lends a connection: a ping only when the socket has stirred.

    An idle autocommit connection that listens to nothing hears from the server only when the
    server ends it (a restart, a terminated backend: PostgreSQL says so before it closes the
    socket). A readable socket is that news, read without a round trip; then the ping (which
    raises, and the pool takes another connection). Pinging every lend cost each batch a
    round trip, a cost that shows when every request is its own batch (measured in
    docs/benchmarks.md).
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


class Intake:
    """Writes accepted jobs in batches; `submit` returns once the job is committed."""

    def __init__(self, conninfo: str, *, max_batch: int = 500, concurrency: int = 2) -> None:
        settings = get_settings()
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.max_pending = settings.intake_max_pending
        self.timeout = settings.db_timeout_seconds
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=concurrency + 1,  # one more for the NOTIFY
            kwargs={"autocommit": True, **api_connect_args()},
            open=False,
            check=check_if_stirred,
            timeout=settings.db_timeout_seconds,
            # The pool's reconnects back off without a cap (1, 2, 4, 8 s...): after a failover
            # the first 202 came 7 s after the promotion. A reconnect given up this soon is
            # started afresh, from a 1 s delay, by the next request that waits for a connection.
            reconnect_timeout=settings.db_failover_seconds / RECONNECTS_PER_FAILOVER,
        )
        self._opened = False
        self._pending: list[Pending] = []
        self._in_flight = 0
        self._notify_pending = False
        self._waking = False  # a batch in flight carries the NOTIFY
        self._tasks: set[asyncio.Task[None]] = set()
        self._outage = Outage(log, "database (accepting jobs)")

    async def submit(self, job: NewJob) -> Accepted:
        """Store a job without an idempotency key; returns it once it is committed, or the
        in-flight job holding its unique key (`enqueue.answer_held`).

        Raises LedgerUnavailable (503) when the database is away or too far behind, and
        JobRefused when the database refused this job's row itself.
        """
        if len(self._pending) >= self.max_pending:
            raise LedgerUnavailable(UNAVAILABLE)
        done: asyncio.Future[Holder | None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, done))
        self._kick()
        holder = await done
        if holder is None:
            return Accepted(job.id, job.task, JobState.QUEUED, duplicate=False)
        return answer_held(job, holder)

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()

    def _kick(self) -> None:
        while self._pending and self._in_flight < self.concurrency:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._in_flight += 1
            wakes, self._waking = not self._waking, True
            self._spawn(self._write(batch, wakes))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection_pool(self) -> AsyncConnectionPool[AsyncConnection[tuple[object, ...]]]:
        if not self._opened:
            self._opened = True
            await self.pool.open()
        return self.pool

    async def _insert(self, jobs: list[NewJob], *, wakes: bool = False) -> dict[UUID, Outcome]:
        """Insert jobs in one statement; what each job left out came to (its unique key's holder)."""
        pool = await self._connection_pool()
        refused: dict[UUID, Outcome] = {}
        async with pool.connection(timeout=self.timeout) as conn:
            inserted = await ledger.insert_async(conn, jobs, notify=wakes)
            left_out = [job for job in jobs if job.id not in inserted]
            for _ in range(UNIQUE_ATTEMPTS):
                if not left_out:
                    return refused
                # Autocommit: the INSERT waited for any holder's commit, and this is a new snapshot.
                holders = await unique.holders_async(conn, left_out)
                refused |= holders
                again = [job for job in left_out if job.id not in holders]
                inserted = await ledger.insert_async(conn, again, notify=True) if again else set()
                left_out = [job for job in again if job.id not in inserted]
        for job in left_out:
            refused[job.id] = LedgerUnavailable(f"unique key {job.unique_key!r} is contended; retry later")
        return refused

    async def _write(self, batch: list[Pending], wakes: bool) -> None:
        try:
            refused = await self._insert([job for job, _ in batch], wakes=wakes)
        except UNAVAILABLE_ERRORS as error:
            self._outage.failed(error, jobs=len(batch))
            _settle(batch, LedgerUnavailable(UNAVAILABLE))
        except Exception as error:
            if len(batch) == 1:
                _settle(batch, _refusal(error))
            else:  # one row spoiled the batch: each row on its own, so only that one fails
                await self._one_by_one(batch)
        else:
            self._outage.recovered()
            for job, done in batch:
                _settle([(job, done)], refused.get(job.id))
            if not wakes and not self._waking:
                self._wake_relay()  # the carrier committed before this batch did
            return
        finally:
            self._in_flight -= 1
            if wakes:
                self._waking = False
            self._kick()
        if wakes:
            self._wake_relay()  # its NOTIFY was rolled back: the batches it covered need one

    def _wake_relay(self) -> None:
        if not self._notify_pending:
            self._notify_pending = True
            self._spawn(self._notify())

    async def _one_by_one(self, batch: list[Pending]) -> None:
        stored = False
        for job, done in batch:
            try:
                refused = await self._insert([job])
            except UNAVAILABLE_ERRORS as error:
                self._outage.failed(error, jobs=1)
                _settle([(job, done)], LedgerUnavailable(UNAVAILABLE))
            except Exception as error:
                _settle([(job, done)], _refusal(error))
            else:
                stored = stored or job.id not in refused
                _settle([(job, done)], refused.get(job.id))
        if stored:
            self._wake_relay()

    async def _notify(self) -> None:
        try:
            async with self.pool.connection(timeout=self.timeout) as conn:
                self._notify_pending = False  # a batch committed from now on needs a new one
                await ledger.notify_relay_async(conn)
        except Exception as error:
            self._notify_pending = False
            log.warning("could not wake the relay; its sweep will publish", error=repr(error))


def _refusal(error: Exception) -> Exception:
    """What the request of a row the database refused is answered: a 422 when the row's data was
    refused (class 22, e.g. a character the database cannot store), else the error itself (a
    JSON 500: the service's fault, not the client's)."""
    log.warning("the database refused an accepted job", error=first_line(error))
    if isinstance(error, psycopg.DataError):
        return JobRefused(f"the ledger could not store this job: {first_line(error)}")
    return error


def _settle(batch: list[Pending], outcome: Outcome | None) -> None:
    for _, done in batch:
        if done.done():
            continue
        if isinstance(outcome, Exception):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)
