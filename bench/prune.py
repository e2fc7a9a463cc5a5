"""Prune: deleting a million finished jobs while workers drain, and what it costs their claims.

    .venv/bin/python bench/prune.py                      # 1,000,000 finished rows, 8 claiming threads
    .venv/bin/python bench/prune.py --rows 200000 --batch 5000 --threads 4

A scratch database (conveyor_bench_prune) is migrated and seeded with `--rows` succeeded jobs
finished 30 days ago, each with one attempt row (as a worker leaves them). Then the ledger's
own claim and success statements (`app.ledger.jobs.claim` / `succeed`, what a worker runs for
each job, prepared, on connections of their own) drain queued jobs from `--threads` threads,
twice:

1. without pruning: the baseline;
2. while one pruning pass (`app.relay.pruning.prune`, the relay's code, PRUNE_BATCH_SIZE
   `--batch`) deletes the million rows with their attempts.

Printed: claim latency percentiles and drain rate in each phase, the pass's time and rate,
and the plan of the prune statement at that size (an index range scan, not a table scan).
Numbers only; nothing is asserted. The database is dropped afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _harness import (  # noqa: E402
    create_database,
    database_url,
    drop_database,
    libpq_url,
    load_average,
    machine,
    pg_connect,
    source_version,
    table,
)

DATABASE = "conveyor_bench_prune"
os.environ |= {
    "DATABASE_URL": database_url(DATABASE),
    "DB_POOL_SIZE": "4",
    "LOG_LEVEL": "WARNING",
    "ENVIRONMENT": "test",
}

import psycopg  # noqa: E402

from app.ledger import jobs as ledger  # noqa: E402
from app.ledger import queries  # noqa: E402
from app.ledger.jobs import Doorbell  # noqa: E402
from app.ledger.migrate import upgrade  # noqa: E402
from app.relay import pruning  # noqa: E402
from app.settings import Settings  # noqa: E402

ECHO = "app.tasks.example.echo"
WORKER = "bench:1:prune"
SEED = """
WITH made AS (
    INSERT INTO jobs (id, task, queue, payload, state, attempts, max_attempts, created_at, updated_at,
                      available_at, published_at, started_at, finished_at, result, progress)
    SELECT gen_random_uuid(), %(task)s, 'default', '{"message": "bench"}', 'succeeded', 1, 5,
           now() - interval '30 days' - make_interval(secs => g), now() - interval '30 days',
           now() - interval '30 days', now() - interval '30 days', now() - interval '30 days',
           now() - interval '30 days' + make_interval(secs => g / 1000.0), '{"message": "bench"}', 100
    FROM generate_series(1, %(rows)s) AS g
    RETURNING id, finished_at
)
INSERT INTO job_attempts (job_id, run, attempt, worker_id, started_at, finished_at, outcome, duration_seconds)
SELECT id, 1, 1, 'bench', finished_at, finished_at, 'succeeded', 0.001 FROM made
"""
QUEUE = """
INSERT INTO jobs (id, task, queue, payload, state, max_attempts)
SELECT id, %(task)s, 'default', '{"message": "bench"}', 'queued', 5 FROM unnest(%(ids)s::uuid[]) AS t(id)
"""


def seed(url: str, rows: int, queued: int) -> tuple[float, list[uuid.UUID]]:
    """The finished rows to prune and the queued jobs both phases drain, then a VACUUM, so that
    neither phase meets an autovacuum the seeding set off (the pass's own deletes may)."""
    started = time.monotonic()
    ids = [uuid.uuid4() for _ in range(queued)]
    with pg_connect(url) as conn:
        for done in range(0, rows, 100_000):
            conn.execute(SEED, {"task": ECHO, "rows": min(100_000, rows - done)})
        conn.execute(QUEUE, {"task": ECHO, "ids": ids})
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE job_attempts")
    return time.monotonic() - started, ids


class Drainer:
    """Claims and finishes jobs from several threads, timing every claim, until told to stop."""

    def __init__(self, url: str, ids: list[uuid.UUID], threads: int) -> None:
        self.url = url
        self.ids = ids
        self.threads = threads
        self.claims: list[float] = []
        self.done = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0

    def _take(self) -> uuid.UUID | None:
        with self._lock:
            if self._next >= len(self.ids):
                return None
            self._next += 1
            return self.ids[self._next - 1]

    def _work(self) -> None:
        timings: list[float] = []
        done = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                job_id = self._take()
                if job_id is None:
                    break
                started = time.perf_counter()
                [claim] = ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, ECHO)])
                timings.append(time.perf_counter() - started)
                if claim is not None:
                    ledger.succeed(conn, [(claim.token, '{"message": "bench"}')])
                    done += 1
        with self._lock:
            self.claims += timings
            self.done += done

    def run(self) -> float:
        started = time.monotonic()
        workers = [threading.Thread(target=self._work) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.monotonic() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1] * 1000}


def phase(name: str, drainer: Drainer, seconds: float) -> list[Any]:
    p = percentiles(drainer.claims)
    rate = drainer.done / seconds if seconds else 0.0
    return [name, drainer.done, f"{rate:,.0f}", *(f"{p[k]:.2f}" for k in ("p50", "p95", "p99", "max"))]


def plan_of_prune(url: str, batch: int) -> str:
    params = {"state": "succeeded", "retain": 86_400.0, "limit": batch, "record_stale": False}
    with pg_connect(url) as conn:
        rows = conn.execute(f"EXPLAIN {queries.PRUNE_JOBS}", params).fetchall()
    return "\n".join(f"    {row[0]}" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished jobs to prune")
    parser.add_argument("--batch", type=int, default=1000, help="rows per DELETE (PRUNE_BATCH_SIZE)")
    parser.add_argument("--threads", type=int, default=8, help="claiming threads (a worker's threads)")
    parser.add_argument(
        "--pause",
        type=float,
        default=None,
        help="seconds between statements (PRUNE_PAUSE_SECONDS; default: its default)",
    )
    parser.add_argument("--baseline-jobs", type=int, default=20_000, help="jobs drained without pruning")
    parser.add_argument("--keep", action="store_true", help="leave the scratch database")
    args = parser.parse_args()
    url = libpq_url(DATABASE)
    print(f"machine: {machine()}; load {load_average()}; source {source_version()}")
    create_database(DATABASE)
    try:
        upgrade(database_url(DATABASE))
        # Enough queued jobs to drain for the whole pass; the drain stops when the pass ends.
        seeded, ids = seed(url, args.rows, args.baseline_jobs + max(args.baseline_jobs, args.rows // 5))
        print(f"seeded {args.rows:,} succeeded jobs (30 days old) with an attempt each in {seeded:.0f}s")
        print(f"the prune statement's plan at this size:\n{plan_of_prune(url, args.batch)}")

        baseline = Drainer(url, ids[: args.baseline_jobs], args.threads)
        baseline_seconds = baseline.run()
        during = Drainer(url, ids[args.baseline_jobs :], args.threads)
        settings = Settings(retain_succeeded_seconds=86_400, prune_batch_size=args.batch)
        if args.pause is not None:
            settings = Settings(
                retain_succeeded_seconds=86_400, prune_batch_size=args.batch, prune_pause_seconds=args.pause
            )
        outcome: dict[str, Any] = {}

        def prune() -> None:
            started = time.monotonic()
            outcome["pass"] = pruning.prune(settings)
            outcome["seconds"] = time.monotonic() - started
            during.stop.set()

        pruner = threading.Thread(target=prune)
        pruner.start()
        during_seconds = during.run()
        pruner.join()
        done: pruning.Pass = outcome["pass"]
        seconds = outcome["seconds"]
        print(
            f"\npruning pass: {done.jobs['succeeded']:,} jobs (and their attempts) in {seconds:.1f}s, "
            f"{done.jobs['succeeded'] / seconds:,.0f} jobs/s, {args.batch} per statement, "
            f"{settings.prune_pause_seconds}s between statements"
        )
        if during.done < args.threads or not during.stop.is_set():
            print("note: the drain ran out of queued jobs before the pass ended")
        print()
        print(
            table(
                ["claims", "jobs", "jobs/s", "claim p50 ms", "p95 ms", "p99 ms", "max ms"],
                [
                    phase("without pruning", baseline, baseline_seconds),
                    phase("while pruning", during, during_seconds),
                ],
            )
        )
        ratio = percentiles(during.claims)["p99"] / percentiles(baseline.claims)["p99"]
        print(f"\nclaim p99 while pruning / without: {ratio:.2f}x")
    finally:
        from app.ledger.engines import dispose_sync_engines

        dispose_sync_engines()
        if not args.keep:
            drop_database(DATABASE)


if __name__ == "__main__":
    main()
