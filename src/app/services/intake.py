"""Group commit for accepted jobs: concurrent requests share one INSERT and one commit.

Under load, requests that arrive while a batch is being written wait for the next batch,
so the database sees one statement per batch instead of one transaction per request. A
request is answered only after its batch committed: a 202 still means the job is durable.
With no load a batch is one job and nothing waits.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.schema import NOTIFY_CHANNEL
from app.errors import LedgerUnavailable
from app.logs import get_logger

log = get_logger("conveyor.intake")

INSERT_BATCH = text(
    f"""
    WITH ins AS (
        INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts, available_at)
        SELECT t.id, t.task, t.queue, CAST(t.payload AS jsonb), 'queued', t.priority,
               t.max_attempts, now() + make_interval(secs => t.delay)
        FROM unnest(CAST(:ids AS uuid[]), CAST(:tasks AS text[]), CAST(:queues AS text[]),
                    CAST(:payloads AS text[]), CAST(:priorities AS smallint[]),
                    CAST(:max_attempts AS integer[]), CAST(:delays AS float8[]))
             AS t(id, task, queue, payload, priority, max_attempts, delay)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ins) AS inserted, pg_notify('{NOTIFY_CHANNEL}', '')
    """
)


@dataclass(frozen=True, slots=True)
class NewJob:
    task: str
    queue: str
    payload_json: str
    max_attempts: int
    delay_seconds: float = 0.0
    priority: int = 0


class Intake:
    """Writes accepted jobs in batches; `submit` returns once the job is committed."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500, concurrency: int = 2) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._pending: list[tuple[UUID, NewJob, asyncio.Future[None]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job: NewJob) -> UUID:
        job_id = uuid.uuid4()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job_id, job, done))
        self._kick()
        await done
        return job_id

    def _kick(self) -> None:
        while self._pending and self._in_flight < self.concurrency:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._in_flight += 1
            task = asyncio.create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[UUID, NewJob, asyncio.Future[None]]]) -> None:
        try:
            jobs = [job for _, job, _ in batch]
            params = {
                "ids": [job_id for job_id, _, _ in batch],
                "tasks": [j.task for j in jobs],
                "queues": [j.queue for j in jobs],
                "payloads": [j.payload_json for j in jobs],
                "priorities": [j.priority for j in jobs],
                "max_attempts": [j.max_attempts for j in jobs],
                "delays": [j.delay_seconds for j in jobs],
            }
            async with self.engine.connect() as conn:
                inserted = (await conn.execute(INSERT_BATCH, params)).scalar_one()
            if inserted != len(batch):
                raise RuntimeError(f"inserted {inserted} of {len(batch)} jobs")
        except Exception as error:
            log.error("could not store accepted jobs", jobs=len(batch), error=repr(error))
            failure = LedgerUnavailable("the job ledger is unavailable; nothing was stored, retry later")
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(failure)
        else:
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._in_flight -= 1
            self._kick()
