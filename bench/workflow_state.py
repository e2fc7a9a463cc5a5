"""What the trigger that keeps a workflow's stored state (0016) costs the success statement.

    python bench/workflow_state.py                 # 5 rounds of 20,000 plain jobs and a 1,000-step workflow
    python bench/workflow_state.py --rounds 3 --jobs 20000 --steps 1000 --batch 100

A scratch database (conveyor_bench_workflow_state), migrated to head; no broker, no worker: the
ledger's own statements, as a worker's batcher calls them. Each round, interleaved, with the
trigger enabled and disabled (ALTER TABLE jobs DISABLE TRIGGER; which goes first alternates),
over jobs claimed beforehand: only the `succeed` statements (batches of --batch) are timed.

- plain: jobs that are no workflow step (the trigger's WHEN is false for each row).
- steps: the steps of one workflow, none after another (each success moves the workflow's counts).

Prints the median microseconds per success of each, and the difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from _harness import (
    ECHO_PAYLOAD,
    create_database,
    database_url,
    drop_database,
    libpq_url,
    load_average,
    pg_connect,
)

DATABASE = "conveyor_bench_workflow_state"
WORKER = "bench:1:workflow-state"
TRIGGERS = ("jobs_workflow_step_moved", "jobs_workflow_step_deleted")


def claimed(conn: Any, ids: list[Any], batch: int) -> list[Any]:
    from app.ledger import jobs as ledger
    from app.ledger.jobs import Doorbell

    tokens = []
    for start in range(0, len(ids), batch):
        bells = [Doorbell(i, "app.tasks.example.echo") for i in ids[start : start + batch]]
        tokens += [c.token for c in ledger.claim(conn, WORKER, 600.0, bells) if c is not None]
    assert len(tokens) == len(ids), "every job was claimed"
    return tokens


def timed_successes(conn: Any, tokens: list[Any], batch: int) -> float:
    """Seconds spent in `succeed` statements, all tokens in batches."""
    from app.ledger import jobs as ledger

    spent = 0.0
    for start in range(0, len(tokens), batch):
        chunk = [(t, "{}") for t in tokens[start : start + batch]]
        began = time.perf_counter()
        assert all(ledger.succeed(conn, chunk))
        spent += time.perf_counter() - began
    return spent


def plain_ids(conn: Any, count: int) -> list[Any]:
    from app.tasks.example import echo

    ids = []
    for start in range(0, count, 1000):
        with conn.transaction():
            ids += [
                a.id for a in echo.enqueue_many_sync([ECHO_PAYLOAD] * min(1000, count - start), session=conn)
            ]
    return ids


def step_ids(conn: Any, count: int) -> list[Any]:
    from app.jobs.workflows import Workflow
    from app.tasks.example import echo

    flow = Workflow("bench")
    for i in range(count):
        flow.step(f"s{i}", echo, ECHO_PAYLOAD)
    with conn.transaction():
        made = flow.enqueue_sync(session=conn)
    return list(made.steps.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    from app.ledger.migrate import upgrade

    create_database(DATABASE)
    try:
        upgrade(database_url(DATABASE))
        results: dict[tuple[str, bool], list[float]] = {}
        with pg_connect(libpq_url(DATABASE)) as conn:
            conn.autocommit = True
            for round_ in range(args.rounds):
                for enabled in (True, False) if round_ % 2 == 0 else (False, True):
                    verb = "ENABLE" if enabled else "DISABLE"
                    for trigger in TRIGGERS:
                        conn.execute(f"ALTER TABLE jobs {verb} TRIGGER {trigger}")
                    for kind, make, count in (
                        ("plain", plain_ids, args.jobs),
                        ("steps", step_ids, args.steps),
                    ):
                        conn.execute("TRUNCATE jobs, job_attempts, job_events, workflows CASCADE")
                        conn.execute("VACUUM ANALYZE jobs")
                        tokens = claimed(conn, make(conn, count), args.batch)
                        spent = timed_successes(conn, tokens, args.batch)
                        results.setdefault((kind, enabled), []).append(spent / count * 1e6)
            for trigger in TRIGGERS:
                conn.execute(f"ALTER TABLE jobs ENABLE TRIGGER {trigger}")
        print(f"load average {load_average()}; {args.rounds} rounds, batches of {args.batch}")
        print(f"{'':8}{'trigger on':>14}{'trigger off':>14}{'difference':>14}   (median µs per success)")
        for kind in ("plain", "steps"):
            on = statistics.median(results[(kind, True)])
            off = statistics.median(results[(kind, False)])
            print(f"{kind:8}{on:14.1f}{off:14.1f}{on - off:+14.1f}")
        for kind in ("plain", "steps"):
            pairs = zip(results[(kind, True)], results[(kind, False)], strict=True)
            print(f"{kind} per round (on/off): " + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in pairs))
    finally:
        drop_database(DATABASE)


if __name__ == "__main__":
    main()
