"""A worker process's heartbeat: its row in the workers table, and the leases of what it runs."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from sqlalchemy import Engine, create_engine

from app.ledger import jobs as ledger
from app.ledger import workers
from app.ledger.urls import connect_options
from app.logs import Outage, get_logger
from app.settings import get_settings

log = get_logger("conveyor.worker")

# What the heartbeat reads of its worker: the jobs running now and how many it has run.
Snapshot = Callable[[], tuple[list[UUID], int]]


class Heartbeat:
    """A thread that beats every `heartbeat_seconds` (at least three times per lease)."""

    def __init__(self, worker_id: str, queues: list[str], started_at: datetime, snapshot: Snapshot) -> None:
        self.worker_id = worker_id
        self.queues = queues
        self.started_at = started_at
        self.snapshot = snapshot
        self._stop = threading.Event()
        self._engine: Engine | None = None
        self._thread = threading.Thread(target=self._loop, name="conveyor-heartbeat", daemon=True)
        self._outage = Outage(log, "database (the worker's heartbeat)")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        settings = get_settings()
        interval = min(settings.heartbeat_seconds, settings.lease_seconds / 3)
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as error:
                self._outage.failed(error)
            else:
                self._outage.recovered()
            self._stop.wait(interval)

    def beat(self) -> None:
        job_ids, processed = self.snapshot()
        settings = get_settings()
        if self._engine is None:
            # Lease renewal must never queue behind the task threads it protects: with the
            # shared pool busy, leases of healthy jobs expired and their work was thrown away.
            self._engine = create_engine(
                settings.database_url,
                pool_size=1,
                max_overflow=0,
                connect_args=connect_options(settings.database_url, settings.db_failover_seconds),
            )
        beat = workers.Heartbeat(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            started_at=self.started_at,
            in_flight=len(job_ids),
            processed=processed,
        )
        with self._engine.begin() as conn:
            workers.beat(conn, beat)
            ledger.renew_leases(conn, self.worker_id, job_ids, settings.lease_seconds)
