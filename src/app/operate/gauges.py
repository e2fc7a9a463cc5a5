"""Gauges of what the ledger and the broker hold right now, computed when Prometheus scrapes.

A scrape reads the ledger (a handful of indexed queries on a pool of its own, with
statement timeouts) and the broker (passive queue declares) at the same time, each
bounded by PROBE_TIMEOUT_SECONDS, and keeps the answers a second or so, so a burst of
scrapes costs one round of queries. A source that cannot answer in time drops its
gauges from that scrape and shows `conveyor_metrics_source_up{source} 0` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from dramatiq.common import xq_name
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from app import transport
from app.logs import first_line, get_logger
from app.operate import health
from app.operate import queues as queue_views
from app.operate.stats import (
    LIVE_RELAYS,
    LIVE_WORKERS,
    OLDEST_DUE,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST,
    StateCount,
    counts_by_state_sync,
    live_params,
)
from app.settings import Settings, get_settings

log = get_logger("conveyor.metrics")

# Webhook deliveries waiting to be sent (from the partial index of due ones) and dead ones.
WEBHOOK_DEPTHS = text(
    "SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'),"
    " (SELECT count(*) FROM webhook_deliveries WHERE state = 'dead')"
)

# Scrapes are seconds apart; answers this young are as good as new.
LEDGER_CACHE_SECONDS = 1.0
# Counting a state stops here (about 50 ms of index scan on 2 cores); above it the gauge
# is the planner's estimate, which is what a state this large needs.
EXACT_UP_TO = 100_000


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    jobs_by_state: dict[str, StateCount]
    outbox_backlog: int
    oldest_due_seconds: float
    live_workers: int
    outbox_oldest_seconds: float
    live_relays: int
    paused_queues: frozenset[str] = frozenset()
    waiting_on_limit: dict[str, int] | None = None  # by task
    webhook_pending: int = 0
    webhook_dead: int = 0


def read_ledger(database_url: str) -> LedgerSnapshot:
    with health.probe_engine(database_url).connect() as conn:
        states = counts_by_state_sync(conn, EXACT_UP_TO)
        backlog = int(conn.execute(OUTBOX_BACKLOG).scalar_one())
        oldest = conn.execute(OLDEST_DUE).scalar()
        live = int(conn.execute(LIVE_WORKERS, live_params()).scalar_one())
        outbox_oldest = conn.execute(OUTBOX_OLDEST).scalar()
        relays = int(conn.execute(LIVE_RELAYS, live_params()).scalar_one())
        paused = frozenset(conn.execute(queue_views.PAUSED).scalars())
        waiting = {row[0]: int(row[1]) for row in conn.execute(queue_views.WAITING_ON_LIMIT)}
        pending, dead = conn.execute(WEBHOOK_DEPTHS).one()
    return LedgerSnapshot(
        states,
        backlog,
        max(0.0, float(oldest or 0.0)),
        live,
        max(0.0, float(outbox_oldest or 0.0)),
        relays,
        paused,
        waiting,
        int(pending),
        int(dead),
    )


def ledger_probe(database_url: str) -> health.Probe[LedgerSnapshot]:
    return health.shared_probe(
        ("ledger", database_url), lambda: read_ledger(database_url), LEDGER_CACHE_SECONDS
    )


class StateCollector(Collector):
    """Ledger and broker gauges; `queues` names the queues whose depths to report."""

    def __init__(self, queues: Callable[[], Sequence[str]], settings: Settings | None = None) -> None:
        self._queues = queues
        self._settings = settings

    def describe(self) -> list[Metric]:
        # Registering a collector must not query anything.
        return []

    def collect(self) -> Iterator[Metric]:
        settings = self._settings or get_settings()
        ledger = ledger_probe(settings.database_url).start()
        queues = list(self._queues())
        broker: Future[dict[str, int | None]] | None = None
        if not settings.broker_url.startswith("stub"):
            broker = health.queue_probe(settings.broker_url, queues).start()
        up = GaugeMetricFamily(
            "conveyor_metrics_source_up",
            "1 when this scrape read the source (ledger, broker) within its timeout",
            labels=["source"],
        )
        snapshot = _outcome(ledger, "ledger")
        up.add_metric(["ledger"], 1.0 if snapshot is not None else 0.0)
        if snapshot is not None:
            yield from _ledger_metrics(snapshot)
        if broker is not None:
            depths = _outcome(broker, "broker")
            up.add_metric(["broker"], 1.0 if depths is not None else 0.0)
            if depths is not None:
                yield from _broker_metrics(depths, queues)
        yield up


def _outcome(future: Future[health.T], source: str) -> health.T | None:
    try:
        return future.result(timeout=transport.PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("metrics source did not answer in time", source=source)
    except Exception as error:
        log.warning("metrics source failed", source=source, error=first_line(error))
    return None


def _ledger_metrics(snapshot: LedgerSnapshot) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "conveyor_jobs",
        f"Jobs in the ledger, by state (exact up to {EXACT_UP_TO}, estimated above)",
        labels=["state"],
    )
    for state, count in sorted(snapshot.jobs_by_state.items()):
        jobs.add_metric([state], float(count.count))
    yield jobs
    yield GaugeMetricFamily(
        "conveyor_outbox_backlog",
        "Jobs due to be published that the relay has not published yet",
        value=float(snapshot.outbox_backlog),
    )
    yield GaugeMetricFamily(
        "conveyor_oldest_queued_job_age_seconds",
        "How long the job waiting longest since it became due (queued or retrying) has waited; 0 if none",
        value=snapshot.oldest_due_seconds,
    )
    yield GaugeMetricFamily(
        "conveyor_workers_live",
        "Workers whose heartbeat is younger than the liveness window",
        value=float(snapshot.live_workers),
    )
    yield GaugeMetricFamily(
        "conveyor_outbox_oldest_age_seconds",
        "How long the job that has waited longest for the relay to publish it has waited; 0 if none",
        value=snapshot.outbox_oldest_seconds,
    )
    yield GaugeMetricFamily(
        "conveyor_relays_live",
        "Relays whose heartbeat is younger than the liveness window",
        value=float(snapshot.live_relays),
    )
    yield from _flow_metrics(snapshot)
    yield GaugeMetricFamily(
        "conveyor_webhook_deliveries_pending",
        "Webhook deliveries waiting to be sent: new, or to be tried again after a failed attempt",
        value=float(snapshot.webhook_pending),
    )
    yield GaugeMetricFamily(
        "conveyor_webhook_deliveries_dead",
        "Webhook deliveries whose every attempt failed (kept, replayable)",
        value=float(snapshot.webhook_dead),
    )


def _flow_metrics(snapshot: LedgerSnapshot) -> Iterator[Metric]:
    paused = GaugeMetricFamily(
        "conveyor_queue_paused",
        "1 when the queue is paused (it starts nothing new), else 0",
        labels=["queue"],
    )
    for queue in queue_views.names():
        paused.add_metric([queue], 1.0 if queue in snapshot.paused_queues else 0.0)
    yield paused
    waiting = GaugeMetricFamily(
        "conveyor_jobs_waiting_on_limit",
        "Jobs of tasks with a concurrency or rate limit waiting to be published (over their limit,"
        " or next in line)",
        labels=["task"],
    )
    for task, count in sorted((snapshot.waiting_on_limit or {}).items()):
        waiting.add_metric([task], float(count))
    yield waiting


def _broker_metrics(depths: dict[str, int | None], queues: Sequence[str]) -> Iterator[Metric]:
    ready = GaugeMetricFamily(
        "conveyor_queue_depth", "Messages ready in the queue (RabbitMQ message_count)", labels=["queue"]
    )
    dead = GaugeMetricFamily(
        "conveyor_dead_letter_depth",
        "Messages in the queue's dead-letter queue (<queue>.XQ)",
        labels=["queue"],
    )
    for queue in sorted(set(queues)):
        depth, dead_depth = depths.get(queue), depths.get(xq_name(queue))
        if depth is not None:
            ready.add_metric([queue], float(depth))
        if dead_depth is not None:
            dead.add_metric([queue], float(dead_depth))
    yield ready
    yield dead
