"""Retention: finished jobs older than their state's retention are deleted, with their attempts
and artifacts (and webhook deliveries: delivered ones as succeeded jobs, dead ones as dead jobs);
idempotency keys older than their window are released; expired dashboard
sessions are deleted; worker and relay rows long silent are forgotten; audit entries older than
RETAIN_AUDIT_SECONDS and job events older than EVENT_RETENTION_SECONDS are deleted. Nothing
unfinished is ever pruned.

A relay runs a pass every PRUNE_INTERVAL_SECONDS in a thread of its own, so publishing never
waits for it; `conveyor prune` runs one by hand. A pass deletes in statements of
PRUNE_BATCH_SIZE rows (each its own short transaction, rows taken SKIP LOCKED), oldest first,
until a state has nothing left past its retention: several relays may prune at once, and a
million old rows go as a thousand short statements, never as one long lock. Between two
full statements it pauses PRUNE_PAUSE_SECONDS, so a large backlog leaves the database room
for the claims and successes of the workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.ledger import audit, retention, webhooks, workflows
from app.ledger.engines import sync_engine
from app.ledger.schema import JobState
from app.logs import Outage, get_logger
from app.relay import metrics
from app.settings import Settings, get_settings

log = get_logger("conveyor.relay")

# Called with (what, how many) after each statement: a state's jobs, or "idempotency keys".
Progress = Callable[[str, int], None]
KEYS = "idempotency keys"
# RabbitMQ drops a dead letter after this (Dramatiq's x-message-ttl on <queue>.XQ, in ms).
DEAD_LETTER_TTL_SECONDS = DEAD_MESSAGE_TTL / 1000


def retention_of(settings: Settings) -> dict[str, float]:
    """Seconds each finished state is kept, from its finished_at."""
    return {
        JobState.SUCCEEDED: settings.retain_succeeded_seconds,
        JobState.CANCELLED: settings.retain_cancelled_seconds,
        JobState.DEAD: settings.retain_dead_seconds,
    }


@dataclass
class Pass:
    """What one pass did (or, dry, would do)."""

    jobs: dict[str, int] = field(default_factory=dict)
    keys_released: int = 0
    sessions: int = 0
    workers: int = 0
    relays: int = 0
    audit_entries: int = 0
    events: int = 0
    deliveries: int = 0
    workflows: int = 0  # each deleted with its steps

    @property
    def total(self) -> int:
        return sum(self.jobs.values())


def prune(
    settings: Settings | None = None,
    engine: Engine | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Pass:
    """One pass: every finished state, the idempotency keys, the expired sessions, then workers
    and relays."""
    settings = settings or get_settings()
    engine = engine or sync_engine()
    done = Pass()
    batch = settings.prune_batch_size
    pause = stop or threading.Event()  # waited on between statements: a stop cuts the pause short
    for state, keep in retention_of(settings).items():
        # A dead job's copy outlives it in <queue>.XQ only when it is pruned before RabbitMQ drops it.
        record_stale = state == JobState.DEAD and keep < DEAD_LETTER_TTL_SECONDS
        done.jobs[state] = 0
        while stop is None or not stop.is_set():
            with engine.begin() as conn:
                pruned = retention.prune_jobs(conn, state, keep, batch, record_stale=record_stale)
            done.jobs[state] += pruned
            metrics.PRUNED.labels(state).inc(pruned)
            if progress is not None:
                progress(state, pruned)
            if pruned < batch:
                break
            pause.wait(settings.prune_pause_seconds)
    _prune_workflows(settings, engine, done, pause, stop)
    while stop is None or not stop.is_set():
        with engine.begin() as conn:
            released = retention.release_expired_keys(conn, settings.idempotency_key_ttl_seconds, batch)
        done.keys_released += released
        if progress is not None:
            progress(KEYS, released)
        if released < batch:
            break
        pause.wait(settings.prune_pause_seconds)
    while stop is None or not stop.is_set():
        with engine.begin() as conn:
            ended = retention.prune_sessions(conn, batch)
        done.sessions += ended
        if ended < batch:
            break
        pause.wait(settings.prune_pause_seconds)
    # Webhook deliveries: delivered ones go with succeeded jobs, dead ones are kept as long as dead jobs.
    for state, keep in (
        ("delivered", settings.retain_succeeded_seconds),
        ("dead", settings.retain_dead_seconds),
    ):
        while stop is None or not stop.is_set():
            with engine.begin() as conn:
                pruned = webhooks.prune(conn, state, keep, batch)
            done.deliveries += pruned
            if pruned < batch:
                break
            pause.wait(settings.prune_pause_seconds)
    with engine.begin() as conn:
        done.workers = retention.prune_workers(conn, settings.retain_workers_seconds)
        done.relays = retention.prune_relays(conn, settings.retain_workers_seconds)
    while stop is None or not stop.is_set():
        with engine.begin() as conn:
            pruned = audit.prune(conn, settings.retain_audit_seconds, batch)
        done.audit_entries += pruned
        if pruned < batch:
            break
        pause.wait(settings.prune_pause_seconds)
    while stop is None or not stop.is_set():
        with engine.begin() as conn:
            pruned = retention.prune_events(conn, settings.event_retention_seconds, batch)
        done.events += pruned
        if pruned < batch:
            break
        pause.wait(settings.prune_pause_seconds)
    return done


def _prune_workflows(
    settings: Settings, engine: Engine, done: Pass, pause: threading.Event, stop: threading.Event | None
) -> None:
    """Finished workflows past their retention (read from their stored state), with their steps."""
    keep = retention_of(settings)
    record_stale = keep[JobState.DEAD] < DEAD_LETTER_TTL_SECONDS
    batch = max(1, settings.prune_batch_size // 100)  # a workflow holds up to MAX_WORKFLOW_STEPS jobs
    while stop is None or not stop.is_set():
        with engine.begin() as conn:
            pruned, _ = workflows.prune(conn, keep, batch, record_stale=record_stale)
        done.workflows += pruned
        if pruned < batch:
            break
        pause.wait(settings.prune_pause_seconds)


def count(settings: Settings | None = None, engine: Engine | None = None) -> Pass:
    """What a pass would delete now (`conveyor prune --dry-run`): jobs by state, audit entries."""
    settings = settings or get_settings()
    engine = engine or sync_engine()
    with engine.connect() as conn:
        return Pass(
            jobs={
                state: retention.count_prunable(conn, state, keep)
                for state, keep in retention_of(settings).items()
            },
            audit_entries=audit.count_prunable(conn, settings.retain_audit_seconds),
            events=retention.count_prunable_events(conn, settings.event_retention_seconds),
        )


class Pruner:
    """A relay's pruning thread: a pass at start, then one every PRUNE_INTERVAL_SECONDS."""

    def __init__(
        self, settings: Settings, engine: Engine | None = None, outage: Outage | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.passes = 0
        self._outage = outage or Outage(log, "database (pruning)")
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="conveyor-pruner", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_once(stop)
            stop.wait(self.settings.prune_interval_seconds)

    def run_once(self, stop: threading.Event | None = None) -> Pass | None:
        try:
            done = prune(self.settings, self.engine, stop=stop)
        except (OperationalError, psycopg.OperationalError) as error:
            self._outage.failed(error)
            return None
        except Exception:  # a thread of its own: nobody else would see the error
            log.exception("pruning pass failed; the next one tries again")
            return None
        self._outage.recovered()
        self.passes += 1
        if (
            done.total
            or done.keys_released
            or done.sessions
            or done.workers
            or done.relays
            or done.audit_entries
            or done.events
            or done.deliveries
            or done.workflows
        ):
            log.info(
                "pruned",
                jobs=done.jobs,
                idempotency_keys_released=done.keys_released,
                sessions=done.sessions,
                workers=done.workers,
                relays=done.relays,
                audit_entries=done.audit_entries,
                events=done.events,
                webhook_deliveries=done.deliveries,
                workflows=done.workflows,
            )
        return done
