"""The relay: publishes committed, due jobs to RabbitMQ, durably, in batches.

It is woken by NOTIFY right after a job commits and also sweeps on a timer, so a broker
outage delays jobs but never loses them. Rows are taken FOR UPDATE SKIP LOCKED, so any
number of relays may run. The sweep also hands back jobs whose lease expired (their
worker crashed or stalled) and, once attempts are used up, buries them in the ledger and
in `<queue>.XQ`.
"""

from __future__ import annotations

import threading
import time

import psycopg
from dramatiq import Message
from sqlalchemy.exc import OperationalError

from app.ledger import jobs as ledger
from app.ledger.engines import sync_engine
from app.ledger.schema import NOTIFY_CHANNEL
from app.logs import get_logger
from app.relay.publisher import BatchPublisher
from app.settings import Settings, get_settings

log = get_logger("conveyor.relay")

# Stale publications are rare; looking for them once in a while is enough.
REARM_EVERY_SECONDS = 30.0


def message_for(job: ledger.Publishable | ledger.Reaped, priority: int = 0) -> Message[None]:
    return Message(
        queue_name=job.queue,
        actor_name=job.task,
        args=(),
        kwargs=job.payload,
        options={"job_id": str(job.id), "run": job.run, "broker_priority": priority},
    )


class Relay:
    """Moves due jobs from the ledger to the broker; one instance per relay process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.publisher = BatchPublisher(self.settings.broker_url)
        self.published = 0
        self.reaped = 0
        self._last_rearm = 0.0

    def publish_due(self) -> int:
        """Publish one batch of due jobs; the rows stay locked until the broker confirmed them."""
        with sync_engine().begin() as conn:
            batch = ledger.take_publishable(conn, self.settings.relay_batch_size)
            self.publisher.publish([(message_for(job, job.priority), job.priority) for job in batch])
            ledger.mark_published(conn, [job.id for job in batch])
        self.published += len(batch)
        return len(batch)

    def sweep(self) -> int:
        """Hand back expired leases; bury jobs whose attempts a crash used up."""
        with sync_engine().begin() as conn:
            reaped = ledger.reap_expired_leases(conn)
            buried = [(message_for(job), 0) for job in reaped if job.state == "dead"]
            self.publisher.publish(buried, dead=True)
            if time.monotonic() - self._last_rearm > REARM_EVERY_SECONDS:
                self._last_rearm = time.monotonic()
                rearmed = ledger.rearm_stale_publications(conn, self.settings.republish_after_seconds)
                if rearmed:
                    log.warning("publishing again jobs whose message was never claimed", jobs=rearmed)
        for job in reaped:
            log.warning(
                "lease expired: job handed back" if job.state != "dead" else "lease expired: job dead",
                job_id=str(job.id),
                task=job.task,
                attempt=job.attempts,
                state=job.state,
            )
        self.reaped += len(reaped)
        return len(reaped)

    def next_wait(self) -> float:
        with sync_engine().connect() as conn:
            due = ledger.seconds_until_next_due(conn)
        sweep = self.settings.relay_sweep_seconds
        return sweep if due is None else max(0.0, min(sweep, due))

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set, surviving database and broker outages."""
        log.info("relay started", batch_size=self.settings.relay_batch_size)
        listener: psycopg.Connection[tuple[object, ...]] | None = None
        pause = 0.2
        last_sweep = 0.0
        while not stop.is_set():
            try:
                if listener is None or listener.closed:
                    listener = _listen(self.settings)
                while self.publish_due() == self.settings.relay_batch_size and not stop.is_set():
                    pass
                if time.monotonic() - last_sweep >= self.settings.relay_sweep_seconds:
                    self.sweep()
                    last_sweep = time.monotonic()
                wait = self.next_wait()
                if wait > 0:
                    for _ in listener.notifies(timeout=wait, stop_after=1):
                        pass
                pause = 0.2
            except (OperationalError, psycopg.OperationalError) as error:
                log.warning("database unavailable; relay retrying", error=str(error).splitlines()[0])
                _close(listener)
                listener = None
                stop.wait(pause)
                pause = min(pause * 2, 5.0)
            except Exception as error:
                log.warning("broker unavailable; relay retrying", error=repr(error))
                self.publisher.close()
                stop.wait(pause)
                pause = min(pause * 2, 5.0)
        _close(listener)
        self.publisher.close()
        log.info("relay stopped", published=self.published, reaped=self.reaped)


def _listen(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(settings.libpq_url, autocommit=True, connect_timeout=5)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def _close(conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            log.debug("closing the listener failed", exc_info=True)
