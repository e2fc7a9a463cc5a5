"""Scaling: 1, 2 and 4 worker processes, and 1 or 2 relays, on this machine; where the bottleneck moves.

    python bench/scaling.py                       # 10,000 jobs per run
    python bench/scaling.py --jobs 4000 --processes 1,2 --relays 1,2

Workers: the drain of bench/drain.py (N echo jobs published beforehand, then
`conveyor worker --processes P --threads 8`) for each P, with the ledger's commits per
second, WAL bytes per job and PostgreSQL's CPU beside the rate. Relays: N rows inserted
into the outbox, then R `conveyor relay` processes started at once, timed until every row
is published (they share the work with FOR UPDATE SKIP LOCKED).

On 2 cores every process competes with PostgreSQL and RabbitMQ for the same CPU: read the
rows as "what one more process buys here", and docs/scaling.md for the path past one machine.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import drain
from _harness import (
    CONVEYOR,
    Query,
    cpu_seconds,
    libpq_url,
    load_average,
    machine,
    migrate,
    pg_backends,
    processes,
    rabbitmq_server,
    scratch_vhost,
    source_version,
    table,
    work_dir,
)


@dataclass
class RelayResult:
    relays: int
    jobs: int
    seconds: float
    relay_cpu_ms: float
    db_cpu_ms: float
    broker_cpu_ms: float
    load: str

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def run_relays(relays: int, jobs: int, timeout: float) -> RelayResult:
    out = work_dir(f"scaling-relays-{relays}")
    with (
        scratch_vhost(drain.SCRATCH, False) as broker,
        drain.scratch_database(drain.DATABASE, False),
        processes() as procs,
    ):
        env = drain.conveyor_env(broker)
        migrate(env, out)
        drain.preload_ledger(jobs)
        with Query(libpq_url(drain.DATABASE)) as query:
            db_before = cpu_seconds(pg_backends(drain.DATABASE))
            broker_before = cpu_seconds(rabbitmq_server())
            started = time.monotonic()
            running = [procs.start(f"relay-{i}", [CONVEYOR, "relay"], env, out) for i in range(relays)]
            first: float | None = None
            relay_before = 0.0
            left = jobs
            deadline = started + timeout
            while time.monotonic() < deadline:
                for relay in running:
                    relay.check_alive()
                left = int(query.one("SELECT count(*) FROM jobs WHERE published_at IS NULL")[0])
                if first is None and left < jobs:
                    first = time.monotonic()
                    db_before = cpu_seconds(pg_backends(drain.DATABASE))
                    broker_before = cpu_seconds(rabbitmq_server())
                    relay_before = sum(cpu_seconds(r.tree()) for r in running)
                if left == 0:
                    break
                time.sleep(0.05)
            else:
                raise TimeoutError(f"{relays} relays left {left} of {jobs} unpublished after {timeout:.0f}s")
            done = time.monotonic()
            relay_ms = (sum(cpu_seconds(r.tree()) for r in running) - relay_before) * 1000 / jobs
            db_ms = (cpu_seconds(pg_backends(drain.DATABASE)) - db_before) * 1000 / jobs
            broker_ms = (cpu_seconds(rabbitmq_server()) - broker_before) * 1000 / jobs
        assert first is not None
        return RelayResult(relays, jobs, done - first, relay_ms, db_ms, broker_ms, load_average())


def render_workers(results: list[drain.DrainResult], counts: list[int], threads: int) -> str:
    headers = [
        "worker processes",
        "jobs/s",
        "x one process",
        "worker CPU ms/job (all processes)",
        "PG CPU ms/job",
        "RabbitMQ CPU ms/job",
        "ledger commits/s",
        "WAL bytes/job",
        "load after",
    ]
    base = results[0].rate if results else 0.0
    rows = [
        [
            n,
            r.rate,
            f"{r.rate / base:.2f}x" if base else "-",
            r.worker_cpu_ms,
            r.db_cpu_ms,
            r.broker_cpu_ms,
            r.extra.get("commits/s", float("nan")),
            r.extra.get("WAL bytes per job", float("nan")),
            r.load_after,
        ]
        for n, r in zip(counts, results, strict=True)
    ]
    return "\n".join(
        [
            f"## Scaling the workers: {results[0].jobs if results else 0:,} echo jobs,"
            f" {threads} threads each",
            "",
            table(headers, rows),
            "",
        ]
    )


def render_relays(results: list[RelayResult]) -> str:
    headers = [
        "relays",
        "jobs",
        "publish s",
        "jobs/s",
        "x one relay",
        "relay CPU ms/job",
        "PG CPU ms/job",
        "RabbitMQ CPU ms/job",
        "load after",
    ]
    base = results[0].rate if results else 0.0
    rows = [
        [
            r.relays,
            r.jobs,
            r.seconds,
            r.rate,
            f"{r.rate / base:.2f}x" if base else "-",
            r.relay_cpu_ms,
            r.db_cpu_ms,
            r.broker_cpu_ms,
            r.load,
        ]
        for r in results
    ]
    return "\n".join(["## Scaling the relays: publishing a full outbox", "", table(headers, rows), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per run (default 10000)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--processes", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--relays", default="1,2", help="relay counts (default 1,2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per step (default 300)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",") if n.strip()]
    relays = [int(n) for n in args.relays.split(",") if n.strip()]

    print(f"Machine: {machine()}. Source: {source_version()}.\n")
    workers = []
    for n in counts:
        opts = drain.Options(args.jobs, args.threads, args.timeout, False, False, n)
        workers.append(drain.run_conveyor(opts))
        print(f"scaling: {n} worker processes: {workers[-1].rate:,.0f} jobs/s", flush=True)
    print(render_workers(workers, counts, args.threads))
    published = []
    for n in relays:
        published.append(run_relays(n, args.jobs, args.timeout))
        print(f"scaling: {n} relays: {published[-1].rate:,.0f} jobs/s", flush=True)
    print(render_relays(published))


if __name__ == "__main__":
    main()
