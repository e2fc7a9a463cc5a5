"""Workflows: a workflow of 1,000 steps in 10 layers against 1,000 plain jobs, on one worker.

    python bench/workflows.py                    # 2 rounds, 1,000 steps in 10 layers, 2 upstream each
    python bench/workflows.py --rounds 3 --steps 1000 --layers 10 --fan-in 2

A scratch database (conveyor_bench_workflows) and vhost; `conveyor relay` and one `conveyor
worker --processes 1 --threads 8` run throughout. Each round, interleaved:

- plain: N echo jobs by `echo.enqueue_many_sync` (one INSERT, one transaction), timed from
  before the enqueue until the last job succeeded.
- workflow: the same N echo jobs as a workflow, `--layers` layers of N/layers steps, each step
  of a layer after `--fan-in` steps of the layer before (step i after i, i+1, … modulo the
  layer's width), by `Workflow(...).enqueue_sync()`, timed the same way.

Enqueue time is the call alone (validation, the INSERT, the commit). The overhead per step is
(workflow end-to-end - plain end-to-end) / N: what the waiting, the count-downs and the
layers' turns cost, beside the plain jobs that all start at once. PostgreSQL's CPU is read
from the backends of the scratch database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from _harness import (
    CONVEYOR,
    ECHO_PAYLOAD,
    CpuMeter,
    child_env,
    create_database,
    database_url,
    drop_database,
    libpq_url,
    load_average,
    machine,
    migrate,
    pg_backends,
    pg_connect,
    processes,
    scratch_vhost,
    source_version,
    table,
    wait_until,
    work_dir,
)

DATABASE = "conveyor_bench_workflows"
VHOST = "conveyor_bench_workflows"


def succeeded(url: str) -> int:
    with pg_connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()
    assert row is not None
    return int(row[0])


def empty(url: str) -> None:
    with pg_connect(url) as conn:
        conn.execute("TRUNCATE jobs, job_attempts, workflows CASCADE")


def layered(steps: int, layers: int, fan_in: int) -> Any:
    from app.jobs.workflows import Workflow
    from app.tasks.example import echo

    width = steps // layers
    flow = Workflow("bench")
    for layer in range(layers):
        for i in range(width):
            after = [f"l{layer - 1}s{(i + k) % width}" for k in range(fan_in)] if layer else []
            flow.step(f"l{layer}s{i}", echo, ECHO_PAYLOAD, after=sorted(set(after)))
    return flow


def measure(url: str, n: int, enqueue: Callable[[], object]) -> dict[str, float]:
    empty(url)
    meter = CpuMeter("postgres", lambda: pg_backends(DATABASE))
    meter.start()
    started = time.perf_counter()
    enqueue()
    enqueued = time.perf_counter() - started
    wait_until(lambda: succeeded(url) >= n, timeout=600, what=f"{n} jobs succeeded", interval=0.05)
    total = time.perf_counter() - started
    return {"enqueue_s": enqueued, "end_to_end_s": total, "pg_cpu_ms_per_job": meter.elapsed() * 1000 / n}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--fan-in", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{machine()}; load {load_average()}; source {source_version()}")
    create_database(DATABASE)
    cwd = work_dir("workflows")
    try:
        with scratch_vhost(VHOST) as broker, processes() as procs:
            env = child_env(DATABASE_URL=database_url(DATABASE), BROKER_URL=broker, LOG_LEVEL="WARNING")
            migrate(env, cwd)
            os.environ.update({"DATABASE_URL": env["DATABASE_URL"], "BROKER_URL": broker})
            from app.tasks.example import echo

            procs.start("relay", [CONVEYOR, "relay"], env, cwd)
            procs.start("worker", [CONVEYOR, "worker", "--processes", "1", "--threads", "8"], env, cwd)
            url = libpq_url(DATABASE)
            # A warm-up: the worker's pools and prepared statements, the relay's channel.
            measure(url, 200, lambda: echo.enqueue_many_sync([ECHO_PAYLOAD] * 200))
            n = args.steps
            results: dict[str, list[dict[str, float]]] = {"plain": [], "workflow": []}
            for _ in range(args.rounds):
                results["plain"].append(measure(url, n, lambda: echo.enqueue_many_sync([ECHO_PAYLOAD] * n)))
                flow = layered(n, args.layers, args.fan_in)
                results["workflow"].append(measure(url, n, flow.enqueue_sync))
            rows = []
            for kind, runs in results.items():
                median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                rows.append(
                    [
                        kind,
                        f"{median['enqueue_s'] * 1000:.0f}",
                        f"{median['end_to_end_s']:.2f}",
                        f"{n / median['end_to_end_s']:.0f}",
                        f"{median['pg_cpu_ms_per_job']:.2f}",
                    ]
                )
            print(table(["jobs", "enqueue ms", "end to end s", "jobs/s", "PG CPU ms/job"], rows))
            plain = statistics.median(r["end_to_end_s"] for r in results["plain"])
            flowed = statistics.median(r["end_to_end_s"] for r in results["workflow"])
            print(f"overhead per step: {(flowed - plain) * 1000 / n:.2f} ms ({flowed / plain:.2f}x plain)")
            for kind, runs in results.items():
                print(kind, [f"{r['end_to_end_s']:.2f}s" for r in runs])
    finally:
        drop_database(DATABASE)


if __name__ == "__main__":
    main()
