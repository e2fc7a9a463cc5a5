"""procrastinate on PostgreSQL: bulk and single enqueue, then ONE worker draining N noop jobs.

    bench/.venvs/procrastinate/bin/python bench/peers/durable/procrastinate_bench.py
        [--n 10000] [--concurrency 10]

Settings (docs: howto/production/concurrency.md, discussions.md "Mind the size of your
PostgreSQL pool" and "How polling works", howto/basics/batch_defer.md):
- an ``async def`` noop task: the worker is asyncio; sync tasks would run in a thread
  (asgiref sync_to_async) for no gain;
- ``concurrency`` sub-workers (default 10) with a PsycopgConnector pool of concurrency + 1
  connections ("the shorter your average job execution time, the more your pool will need to
  contain as many connections as your concurrency (plus one)");
- LISTEN/NOTIFY on (default); the fetch polling interval does not matter here, since a worker
  keeps fetching while it has capacity and jobs are there;
- ``delete_jobs="never"`` (default), so the succeeded rows can be counted;
- bulk enqueue with ``Task.batch_defer_async`` (one call for all N), single with ``defer_async``;
- logging at WARNING (no per-job INFO lines), as for every peer here.

Copied from ../shared/durable-peers/procrastinate_bench.py (see durable_common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import durable_common as dc

QUEUE = "bench"


def build_app(db: str, pool_size: int | None = None):
    import procrastinate

    pool = {"min_size": pool_size, "max_size": pool_size} if pool_size else {}
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dc.dsn(db), **pool))

    @app.task(name="noop", queue=QUEUE)
    async def noop() -> None:
        if dc.INJECT_FAILURE:
            raise RuntimeError("injected failure (DURABLE_BENCH_FAIL=1)")

    return app


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--concurrency", type=int, default=10, help="worker sub-workers (default 10)")


def settings(args: argparse.Namespace) -> str:
    return (
        f"async noop; worker concurrency={args.concurrency}, psycopg pool {args.concurrency + 1}"
        " (concurrency+1); listen_notify=on; delete_jobs=never; asyncio loop; log WARNING;"
        " bulk=batch_defer_async(N) in one call"
    )


async def migrate(db: str, args: argparse.Namespace) -> None:
    app = build_app(db)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue_single(db: str, k: int, args: argparse.Namespace) -> float:
    app = build_app(db)
    async with app.open_async():
        noop = app.tasks["noop"]
        t = time.perf_counter()
        for _ in range(k):
            await noop.defer_async()
        return time.perf_counter() - t


async def enqueue_bulk(db: str, n: int, args: argparse.Namespace) -> float:
    app = build_app(db)
    async with app.open_async():
        noop = app.tasks["noop"]
        payloads = [{} for _ in range(n)]
        t = time.perf_counter()
        await noop.batch_defer_async(*payloads)
        return time.perf_counter() - t


async def count(m: dc.Monitor) -> dc.Counts:
    done, failed, pending = await m.row(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'),"
        " count(*) FILTER (WHERE status IN ('failed', 'cancelled', 'aborted')),"
        " count(*) FILTER (WHERE status IN ('todo', 'doing', 'aborting'))"
        " FROM procrastinate_jobs"
    )
    return int(done), int(failed), int(pending)


async def span(m: dc.Monitor) -> float | None:
    (s,) = await m.row(
        "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded')"
        " - min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events"
    )
    return None if s is None else float(s)


def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    app = build_app(args.db, args.concurrency + 1)

    async def go() -> None:
        async with app.open_async():
            await app.run_worker_async(
                queues=[QUEUE],
                concurrency=args.concurrency,
                wait=True,
                listen_notify=True,
                delete_jobs="never",
                install_signal_handlers=True,  # SIGTERM: graceful stop
            )

    asyncio.run(go())


PEER = dc.Peer(
    name="procrastinate",
    dist="procrastinate",
    add_args=add_args,
    settings=settings,
    migrate=migrate,
    enqueue_single=enqueue_single,
    enqueue_bulk=enqueue_bulk,
    count=count,
    worker=worker,
    span=span,
)

if __name__ == "__main__":
    # Run from the module imported by its own name, not __main__: procrastinate warns about apps
    # defined in __main__, and task paths stay importable in the worker process.
    import procrastinate_bench

    sys.exit(dc.main(procrastinate_bench.PEER))
