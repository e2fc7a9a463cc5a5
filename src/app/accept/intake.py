"""Group commit for accepted jobs: concurrent requests share one INSERT and one commit.

Under load, requests that arrive while a batch is being written wait for the next batch,
so the database sees one statement per batch instead of one transaction per request. A
request is answered only after its batch committed: a 202 still means the job is durable.
With no load a batch is one job and nothing waits.

This is the API's hottest path, so it talks to psycopg directly (a small pool of its own,
autocommit, prepared statement) rather than through SQLAlchemy's async layer. The relay is
woken by a NOTIFY sent after the batch committed, at most one at a time: the relay takes
every due row when it wakes, and it sweeps on a timer as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.errors import LedgerUnavailable
from app.ledger import jobs as ledger
from app.ledger.jobs import NewJob
from app.logs import get_logger

log = get_logger("conveyor.intake")

Pending = tuple[NewJob, "asyncio.Future[None]"]


class Intake:
    """Writes accepted jobs in batches; `submit` returns once the job is committed."""

    def __init__(self, conninfo: str, *, max_batch: int = 500, concurrency: int = 2) -> None:
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=concurrency + 1,  # one more for the NOTIFY
            kwargs={"autocommit": True},
            open=False,
            check=AsyncConnectionPool.check_connection,
        )
        self._opened = False
        self._pending: list[Pending] = []
        self._in_flight = 0
        self._notify_pending = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job: NewJob) -> UUID:
        """Store a job without an idempotency key; returns its id once it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, done))
        self._kick()
        await done
        return job.id

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()

    def _kick(self) -> None:
        while self._pending and self._in_flight < self.concurrency:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._in_flight += 1
            self._spawn(self._write(batch))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection_pool(self) -> AsyncConnectionPool[AsyncConnection[tuple[object, ...]]]:
        if not self._opened:
            self._opened = True
            await self.pool.open()
        return self.pool

    async def _write(self, batch: list[Pending]) -> None:
        try:
            pool = await self._connection_pool()
            async with pool.connection(timeout=10) as conn:
                inserted = await ledger.insert_async(conn, [job for job, _ in batch])
                if len(inserted) != len(batch):
                    raise RuntimeError(f"inserted {len(inserted)} of {len(batch)} jobs")
        except Exception as error:
            log.error("could not store accepted jobs", jobs=len(batch), error=repr(error))
            failure = LedgerUnavailable("the job ledger is unavailable; nothing was stored, retry later")
            for _, done in batch:
                if not done.done():
                    done.set_exception(failure)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            if not self._notify_pending:
                self._notify_pending = True
                self._spawn(self._notify())
        finally:
            self._in_flight -= 1
            self._kick()

    async def _notify(self) -> None:
        try:
            async with self.pool.connection(timeout=10) as conn:
                self._notify_pending = False  # a batch committed from now on needs a new one
                await ledger.notify_relay_async(conn)
        except Exception as error:
            self._notify_pending = False
            log.warning("could not wake the relay; its sweep will publish", error=repr(error))
