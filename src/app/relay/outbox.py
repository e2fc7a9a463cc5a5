"""The relay: publishes committed, due jobs to RabbitMQ, durably, in batches.

It is woken by NOTIFY right after a job commits and also sweeps on a timer, so a broker
outage delays jobs but never loses them. Rows are taken FOR UPDATE SKIP LOCKED, so any
number of relays may run. Jobs of tasks with limits are published per key, only as many as
may start (`flow.take_limited`); a paused queue's jobs wait. The sweep also hands back jobs
whose lease expired (their worker crashed or stalled), puts the copies of dead jobs in
`<queue>.XQ`, and removes the copies of dead runs an operator replayed or discarded. Two
threads of the relay work beside it: one fires the schedules whose tick has come
(`relay.schedules`), one prunes what retention lets go (`relay.pruning`). A heartbeat row
says the relay is alive.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from functools import partial

import psycopg
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from sqlalchemy.exc import OperationalError

from app import tracing, transport
from app.errors import PublishFailed
from app.ledger import flow, relays, schedules, workflows
from app.ledger import jobs as ledger
from app.ledger.connections import own_connection
from app.ledger.engines import sync_engine
from app.ledger.event_schema import PUBLISH_APPLICATION_NAME
from app.ledger.schema import KEYS_APART, NOTIFY_CHANNEL, SLOT_FREED, SLOT_FREED_OF, TASK_APART
from app.ledger.urls import own_conninfo
from app.logs import Outage, get_logger
from app.relay import deadletters, metrics
from app.relay.messages import doorbell
from app.relay.pruning import Pruner
from app.relay.schedules import Ticker
from app.settings import Settings, get_settings

log = get_logger("conveyor.relay")

# Stale publications are rare; looking for them once in a while is enough.
REARM_EVERY_SECONDS = 30.0
# Operators replay in bursts; one pass over the dead-letter queues this often serves them.
CLEAN_EVERY_SECONDS = 5.0
# A take of jobs with limits walks every waiting key, and slots free one success at a time:
# taking at most this often refills many keys per walk, for at most this much added wait.
LIMITED_TAKE_SPACING_SECONDS = 0.025


class Relay:
    """Moves due jobs from the ledger to the broker; one instance per relay process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.publisher = transport.publisher(self.settings.broker_url, self.settings.amqp_heartbeat_seconds)
        self.relay_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = datetime.now(UTC)
        self.published = 0
        self.reaped = 0
        self._last = {"rearm": 0.0, "clean": 0.0, "beat": 0.0, "sweep": 0.0}
        self._database = Outage(log, "database")
        self._broker = Outage(log, "broker")
        # The relay's threads share its outage lines: one warning when the database goes away.
        self.ticker = Ticker(self.settings, outage=self._database)
        self.pruner = Pruner(self.settings, outage=self._database)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._limited_after = 0.0  # the next take of jobs with limits, not before (monotonic)
        self._limited_owed = False  # a take of jobs with limits was put off
        self._plain_due = True  # something besides a freed slot rang, or the timer ran out
        # The keys whose slot a success freed since the last take of jobs with limits, which
        # visits only them unless something else rang (a new job may be any key's): then every key.
        self._freed: set[tuple[str, str]] = set()
        self._every_key = True
        self._swept = False  # the first round sweeps before it publishes

    def publish_due(self, *, plain: bool = True) -> int:
        """Publish one batch of due jobs (unless `plain` is False), and one of due jobs with
        limits that may start now (of the keys whose slot freed, unless `plain` or a NOTIFY
        without a key asks for every key's); the rows stay locked until the broker took them. The
        larger of the two batches' sizes: a full one means more may be due."""
        published = self._publish(ledger.take_publishable, dead=False) if plain else 0
        now = time.monotonic()
        self._limited_owed = now < self._limited_after
        if self._limited_owed:
            return published
        keys = None if plain or self._every_key else self._freed
        self._freed, self._every_key = set(), True  # a take that fails leaves every key to walk
        limited = self._publish(partial(flow.take_limited, keys=keys), dead=False) if keys != set() else 0
        self._every_key = False
        full = limited == self.settings.relay_batch_size
        self._limited_after = now + (0.0 if full else LIMITED_TAKE_SPACING_SECONDS)
        return max(published, limited)

    def dead_letter_due(self) -> int:
        """Put one batch of dead jobs' copies in their `<queue>.XQ`."""
        return self._publish(ledger.take_dead_letters, dead=True)

    def _publish(self, take: ledger.Taker, *, dead: bool) -> int:
        conn = self._ledger()
        with conn.transaction():  # the take marks the rows published; a failed publish undoes it
            batch = take(conn, self.settings.relay_batch_size)
            if not batch:
                return 0
            try:
                with tracing.publishing(batch):  # a span in each job's trace, when tracing is on
                    self.publisher.publish([(doorbell(job), job.priority) for job in batch], dead=dead)
            except PublishFailed:
                metrics.BATCHES.labels("failed").inc()
                raise
        metrics.BATCHES.labels("published").inc()
        metrics.PUBLISHED.labels("dead_letter" if dead else "job").inc(len(batch))
        self.published += len(batch)
        return len(batch)

    def sweep(self) -> int:
        """Hand back expired leases (burying jobs a crash left without attempts); arm again
        publications nobody claimed for long; dead-letter what died."""
        with sync_engine().begin() as conn:
            reaped = ledger.reap_expired_leases(conn)
            workflows.cancel_downstream(conn, [job.id for job in reaped if job.state != "retrying"])
            if self._due("rearm", REARM_EVERY_SECONDS):
                settled = workflows.settle_waiting(conn, REARM_EVERY_SECONDS)
                if settled:
                    log.warning("queued workflow steps whose upstream steps had all succeeded", jobs=settled)
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
        metrics.REAPED.inc(len(reaped))
        self.reaped += len(reaped)
        if transport.kind(self.settings.broker_url) == "redis":  # RabbitMQ forgets nothing it confirmed
            self._rearm_if_forgotten()
        while self.dead_letter_due() == self.settings.relay_batch_size:
            pass
        if self._due("clean", CLEAN_EVERY_SECONDS):
            metrics.STALE_COPIES_REMOVED.inc(deadletters.clean(sync_engine(), self.settings.broker_url))
        return len(reaped)

    def _rearm_if_forgotten(self) -> None:
        """A broker that forgot its messages (Redis flushed or restarted) gets every unclaimed job
        again at once; what silent consumers took (and the lease has not) goes back to the queue:
        after min(3 heartbeats, LEASE_SECONDS), so never after the jobs they claimed."""
        with sync_engine().begin() as conn:
            cutoff = self.publisher.forgotten(schedules.database_now(conn))
            rearmed = ledger.rearm_forgotten(conn, cutoff, DEAD_MESSAGE_TTL / 1000) if cutoff else 0
        if cutoff is not None:
            log.warning("the broker forgot its messages: publishing again", jobs=rearmed, cutoff=str(cutoff))
        silent = min(3.0 * self.settings.amqp_heartbeat_seconds, self.settings.lease_seconds)
        if back := self.publisher.requeue_orphans(silent):
            log.warning("messages a silent consumer took went back to the queue", messages=back)

    def beat(self) -> None:
        """The heartbeat row, at most every HEARTBEAT_SECONDS: this relay is alive and working."""
        if not self._due("beat", self.settings.heartbeat_seconds):
            return
        heartbeat = relays.Heartbeat(
            self.relay_id, socket.gethostname(), os.getpid(), self.started_at, self.published
        )
        with sync_engine().begin() as conn:
            relays.beat(conn, heartbeat)

    def next_wait(self) -> float:
        due = ledger.seconds_until_next_due(self._ledger())
        if self._limited_owed:
            owed = max(0.0, self._limited_after - time.monotonic())
            due = owed if due is None else min(due, owed)
        sweep = self.settings.relay_sweep_seconds
        return sweep if due is None else max(0.0, min(sweep, due))

    def _ledger(self) -> psycopg.Connection[tuple[object, ...]]:
        """The publishing loop's own connection: a round trip per statement, prepared, no pool
        (a pooled checkout cost a ping, and the loop runs once per accepted batch). It only takes
        and marks jobs, never writes an event, and is named so: its transaction, open while the
        broker confirms, would otherwise hold back every event committed meanwhile from the
        followers (the event horizon passes over it, migration 0015)."""
        if self._conn is None or self._conn.closed:
            self._conn = own_connection(own_conninfo(), PUBLISH_APPLICATION_NAME)
        return self._conn

    def _forget_ledger(self) -> None:
        _close(self._conn)
        self._conn = None

    def _due(self, what: str, every: float) -> bool:
        if time.monotonic() - self._last[what] < every:
            return False
        self._last[what] = time.monotonic()
        return True

    def work(self, listener: psycopg.Connection[tuple[object, ...]]) -> None:
        """One round: publish all that is due, sweep when its time has come, wait to be woken."""
        self.beat()
        if not self._swept:
            # A Redis never seen before counts as one that forgot: looked at after a first
            # publish, it would have the backlog just published rearmed and published twice.
            self.sweep()
            self._swept = True
            self._last["sweep"] = time.monotonic()
        plain = self._plain_due
        while self.publish_due(plain=plain) == self.settings.relay_batch_size:
            plain = True
        if self._due("sweep", self.settings.relay_sweep_seconds):
            self.sweep()
        wait = self.next_wait()
        self._plain_due = wait <= 0 or self._wait(listener, wait)

    def _wait(self, listener: psycopg.Connection[tuple[object, ...]], wait: float) -> bool:
        """Wait up to `wait` seconds to be woken; whether anything besides a freed slot rang (or
        the time ran out). A freed slot ends the wait only once the spacing of takes of jobs with
        limits allows one: jobs finishing one by one then wake the relay a few times a
        second, not once each. The keys named by the slots freed are kept for that take."""
        end = time.monotonic() + wait
        deadline = end
        while (left := deadline - time.monotonic()) > 0:
            rang = {notify.payload for notify in listener.notifies(timeout=left, stop_after=1)}
            if not rang:
                break
            if not self._slots_freed(rang):
                return True
            self._limited_owed = True
            if time.monotonic() >= self._limited_after:
                return False
            deadline = min(end, self._limited_after)
        return deadline >= end  # the wait's own time ran out, not only the spacing

    def _slots_freed(self, payloads: set[str]) -> bool:
        """Note the keys of the slots freed; whether the payloads were all freed slots."""
        for payload in payloads:
            if payload == SLOT_FREED:
                self._every_key = True
            elif payload.startswith(SLOT_FREED_OF):
                for named in payload.removeprefix(SLOT_FREED_OF).split(KEYS_APART):
                    task, _, key = named.partition(TASK_APART)
                    self._freed.add((task, key))
            else:
                return False
        return True

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set, surviving database and broker outages."""
        log.info("relay started", relay_id=self.relay_id, batch_size=self.settings.relay_batch_size)
        self.ticker.start(stop)
        self.pruner.start(stop)
        listener: psycopg.Connection[tuple[object, ...]] | None = None
        pause = 0.2
        while not stop.is_set():
            try:
                if listener is None or listener.closed:
                    listener = _listen(self.settings)
                self.work(listener)
                self._database.recovered()
                self._broker.recovered()
                pause = 0.2
            except (OperationalError, psycopg.OperationalError) as error:
                self._database.failed(error)
                _close(listener)
                listener = None
                self._forget_ledger()
                self._every_key = True  # what rang while the listener was away is lost
                self._last["beat"] = 0.0  # beat as soon as it is back
                stop.wait(pause)
                pause = min(pause * 2, 5.0)
            except Exception as error:
                self._broker.failed(error)
                self.publisher.close()
                if self._conn is not None and self._conn.broken:
                    self._forget_ledger()
                stop.wait(pause)
                pause = min(pause * 2, 5.0)
        _close(listener)
        self._forget_ledger()
        self.publisher.close()
        self.ticker.join()
        self.pruner.join()
        self._stopped()
        log.info(
            "relay stopped",
            relay_id=self.relay_id,
            published=self.published,
            reaped=self.reaped,
            scheduled=self.ticker.fired,
        )

    def _stopped(self) -> None:
        try:
            with sync_engine().begin() as conn:
                relays.stop(conn, self.relay_id)
        except Exception as error:  # the database is away: the row goes stale, which says as much
            log.warning("could not record the relay's stop", error=repr(error))


def _listen(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    conn = own_connection(own_conninfo())
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def _close(conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            log.debug("closing the listener failed", exc_info=True)
