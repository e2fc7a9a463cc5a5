"""The worker's Prometheus metrics (served on the worker's exporter port)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

JOBS_STARTED = Counter("conveyor_worker_jobs_started_total", "Attempts started", ["task", "queue"])
JOBS_SUCCEEDED = Counter("conveyor_worker_jobs_succeeded_total", "Attempts that succeeded", ["task", "queue"])
JOBS_RETRIED = Counter(
    "conveyor_worker_jobs_retried_total",
    "Attempts that failed and were scheduled again",
    ["task", "queue"],
)
JOBS_DEAD = Counter("conveyor_worker_jobs_dead_total", "Jobs that went dead", ["task", "queue"])
JOBS_CANCELLED = Counter(
    "conveyor_worker_jobs_cancelled_total", "Running jobs that ended cancelled when asked", ["task", "queue"]
)
JOBS_SKIPPED = Counter(
    "conveyor_worker_messages_skipped_total",
    "Messages acknowledged without running (duplicate, finished, cancelled or not yet due)",
    ["queue"],
)
JOBS_HELD = Counter(
    "conveyor_worker_messages_held_back_total",
    "Messages whose job waits (a paused queue, a concurrency or rate limit): acknowledged, the job"
    " left for the relay to publish again when it may start",
    ["queue"],
)
MESSAGES_REFUSED = Counter(
    "conveyor_worker_messages_refused_total",
    "Messages acknowledged and not run because they disagree with the ledger (reason)",
    ["queue", "reason"],
)
JOBS_FENCED = Counter(
    "conveyor_worker_late_writes_refused_total",
    "Results refused because the attempt had lost its lease",
    ["task", "queue"],
)
JOBS_IN_PROGRESS = Gauge(
    "conveyor_worker_jobs_in_progress",
    "Jobs running now",
    ["task", "queue"],
    multiprocess_mode="livesum",
)
JOB_DURATION = Histogram(
    "conveyor_worker_job_duration_seconds",
    "Time a task ran, per attempt",
    ["task", "queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


@dataclass(frozen=True, slots=True)
class TaskMetrics:
    """One task's labelled metrics, looked up once: `.labels()` costs a lock and a dict per call."""

    started: Any
    succeeded: Any
    retried: Any
    dead: Any
    cancelled: Any
    fenced: Any
    in_progress: Any
    duration: Any


@lru_cache(maxsize=4096)
def for_task(task: str, queue: str) -> TaskMetrics:
    return TaskMetrics(
        started=JOBS_STARTED.labels(task, queue),
        succeeded=JOBS_SUCCEEDED.labels(task, queue),
        retried=JOBS_RETRIED.labels(task, queue),
        dead=JOBS_DEAD.labels(task, queue),
        cancelled=JOBS_CANCELLED.labels(task, queue),
        fenced=JOBS_FENCED.labels(task, queue),
        in_progress=JOBS_IN_PROGRESS.labels(task, queue),
        duration=JOB_DURATION.labels(task, queue),
    )
