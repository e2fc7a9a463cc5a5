"""Enqueue from Python: what `task.enqueue` costs inside your own transaction, beside the HTTP path.

    .venv/bin/python bench/enqueue.py [--calls 10000]

On a scratch database: `enqueue_sync` in a SQLAlchemy Session (one transaction, the call
alone timed: the INSERT and the NOTIFY), `await enqueue` in an AsyncSession (the same), each
also with a commit per call (what a one-job transaction costs), and one client POSTing
`/api/v1/jobs` to a running `conveyor api` one request at a time (latency of the HTTP door).
Printed: median and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable

import httpx
from _harness import (
    CONVEYOR,
    ROOT,
    child_env,
    create_database,
    database_url,
    drop_database,
    free_port,
    migrate,
    processes,
    scratch_vhost,
    table,
    wait_until,
    work_dir,
)

DATABASE = "conveyor_bench_enqueue"
PAYLOAD = {"message": "bench"}


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e6, ordered[int(0.99 * (len(ordered) - 1))] * 1e6


def timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def sync_rows(calls: int) -> list[tuple[str, float, float]]:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from app.tasks.example import echo

    engine = create_engine(database_url(DATABASE))
    rows = []
    try:
        with Session(engine) as session:
            echo.enqueue_sync(PAYLOAD, session=session)  # warm: prepared statements, imports
            samples = timed(lambda: echo.enqueue_sync(PAYLOAD, session=session), calls)
            session.commit()
        rows.append(("enqueue_sync in a Session, the call", *quantiles(samples)))

        def one_job_transaction() -> None:
            with Session(engine) as session:
                echo.enqueue_sync(PAYLOAD, session=session)
                session.commit()

        rows.append(
            ("enqueue_sync + commit (a transaction per job)", *quantiles(timed(one_job_transaction, calls)))
        )
    finally:
        engine.dispose()
    return rows


def async_rows(calls: int) -> list[tuple[str, float, float]]:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from app.tasks.example import echo

    async def run() -> list[tuple[str, float, float]]:
        engine = create_async_engine(database_url(DATABASE))
        try:
            async with AsyncSession(engine) as session:
                await echo.enqueue(PAYLOAD, session=session)
                samples = []
                for _ in range(calls):
                    started = time.perf_counter()
                    await echo.enqueue(PAYLOAD, session=session)
                    samples.append(time.perf_counter() - started)
                await session.commit()
            committed = []
            for _ in range(calls):
                started = time.perf_counter()
                async with AsyncSession(engine) as session:
                    await echo.enqueue(PAYLOAD, session=session)
                    await session.commit()
                committed.append(time.perf_counter() - started)
        finally:
            await engine.dispose()
        return [
            ("await enqueue in an AsyncSession, the call", *quantiles(samples)),
            ("await enqueue + commit (a transaction per job)", *quantiles(committed)),
        ]

    return asyncio.run(run())


def http_rows(calls: int, env: dict[str, str], out: object) -> list[tuple[str, float, float]]:
    import subprocess

    port = free_port()
    key = (
        subprocess.run(
            [CONVEYOR, "keys", "create", f"bench-enqueue-{os.getpid()}", "--scopes", "enqueue"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    with processes() as procs:
        procs.start("api", [CONVEYOR, "api", "--host", "127.0.0.1", "--port", str(port)], env, out)  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), timeout=30, what="the API")
        body = {"task": "app.tasks.example.echo", "payload": PAYLOAD}
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as client:
            client.post("/api/v1/jobs", json=body)
            samples = timed(lambda: client.post("/api/v1/jobs", json=body), calls)
    return [("POST /api/v1/jobs, one client (HTTP, group commit)", *quantiles(samples))]


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    out = work_dir("enqueue")
    create_database(DATABASE)
    try:
        with scratch_vhost("conveyor_bench_enqueue") as broker:
            env = child_env(DATABASE_URL=database_url(DATABASE), BROKER_URL=broker, LOG_FORMAT="json")
            migrate(env, out)
            os.environ.update({"DATABASE_URL": database_url(DATABASE), "BROKER_URL": broker})
            rows = [
                *sync_rows(args.calls),
                *async_rows(args.calls),
                *http_rows(min(args.calls, 5000), env, out),
            ]
    finally:
        drop_database(DATABASE)
    print(f"\n## Enqueue: {args.calls:,} calls each (python {sys.version.split()[0]}, {ROOT})\n")
    print(
        table(
            ["path", "median µs", "p99 µs"], [(name, f"{p50:,.0f}", f"{p99:,.0f}") for name, p50, p99 in rows]
        )
    )


if __name__ == "__main__":
    main()
