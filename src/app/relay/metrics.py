"""The relay's Prometheus metrics, served on RELAY_METRICS_PORT (0: not served)."""

from __future__ import annotations

from prometheus_client import Counter

PUBLISHED = Counter(
    "conveyor_relay_published_total",
    "Messages the relay published, by kind (job: to its queue; dead_letter: a copy to <queue>.XQ)",
    ["kind"],
)
BATCHES = Counter(
    "conveyor_relay_batches_total",
    "Batches the relay tried to publish, by outcome (published, failed)",
    ["outcome"],
)
REAPED = Counter(
    "conveyor_relay_leases_reaped_total",
    "Jobs handed back (or buried) because their worker stopped renewing the lease",
)
STALE_COPIES_REMOVED = Counter(
    "conveyor_relay_stale_dead_letters_removed_total",
    "Stale copies of replayed or discarded dead runs taken out of <queue>.XQ",
)
PRUNED = Counter(
    "conveyor_pruned_jobs_total",
    "Finished jobs deleted past their state's retention (with their attempts and artifacts), by state",
    ["state"],
)
SCHEDULED_JOBS = Counter(
    "conveyor_schedule_jobs_total",
    "Jobs the relay made for schedule ticks (one per tick, whichever relay fired it)",
)
