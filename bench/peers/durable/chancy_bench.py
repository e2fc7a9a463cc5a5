"""chancy on PostgreSQL: bulk and single enqueue, then ONE worker draining N noop jobs.

    bench/.venvs/chancy/bin/python bench/peers/durable/chancy_bench.py [--n 10000] [--concurrency 100]

Settings (from the API docs, i.e. the docstrings of chancy.queue.Queue,
chancy.executors.asyncex.AsyncExecutor, chancy.worker.Worker and Chancy.push_many, and the
0.25.0 release notes for eager_polling):
- an ``async def`` noop on the ``AsyncExecutor`` ("useful for running large numbers of IO-bound
  jobs ... without the high overhead of new processes or threads"; the default executor is a
  process pool);
- queue concurrency 100 (the AsyncExecutor's own default), ``eager_polling=True`` ("immediately
  poll for new jobs after a job completes, rather than waiting for the polling interval"), and
  ``polling_interval=1`` s (the smallest whole number; the default is 5). Without eager polling
  a pre-filled queue drains at most ``concurrency`` jobs per polling interval, since the jobs
  were pushed before the worker started and no NOTIFY wakes it;
- the queue is named ``default``: every worker declares ``default`` at start (a no-op when it
  exists), so using it avoids a second, empty queue with a process-pool executor;
- Worker defaults otherwise, including ``send_outgoing_interval`` = 1 s: job state changes are
  written in batches once a second, so "succeeded" shows up in the database in steps;
- the default plugins (Leadership, Pruner, Recovery, Metrics, Workflow), pool 1..10;
- bulk enqueue with ``push_many`` (default batch_size 1000: one transaction per 1,000 jobs);
  single with ``push`` (one transaction each);
- logging at WARNING (chancy logs every pulled job at INFO), as for every peer here.

Copied from ../shared/durable-peers/chancy_bench.py (see durable_common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import durable_common as dc

QUEUE = "default"


async def noop() -> None:
    if dc.INJECT_FAILURE:
        raise RuntimeError("injected failure (DURABLE_BENCH_FAIL=1)")


def make_chancy(db: str):
    from chancy import Chancy
    from chancy.app import setup_default_logger

    return Chancy(dc.dsn(db), log=setup_default_logger(logging.WARNING))


def the_job():
    from chancy import Job

    return Job.from_func(noop, queue=QUEUE)  # func = "chancy_bench.noop"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--concurrency", type=int, default=100, help="queue concurrency (default 100)")
    ap.add_argument("--polling-interval", type=int, default=1, help="seconds, whole (default 1)")
    ap.add_argument("--no-eager-polling", action="store_true", help="turn eager polling off")
    ap.add_argument("--outgoing-interval", type=float, default=1.0, help="Worker.send_outgoing_interval")


def settings(args: argparse.Namespace) -> str:
    return (
        f"async noop on AsyncExecutor; queue concurrency={args.concurrency};"
        f" eager_polling={not args.no_eager_polling}; polling_interval={args.polling_interval}s;"
        f" send_outgoing_interval={args.outgoing_interval:g}s; LISTEN/NOTIFY on; default plugins;"
        " pool 1..10; asyncio loop; log WARNING; bulk=push_many(N, batch_size=1000)"
    )


async def migrate(db: str, args: argparse.Namespace) -> None:
    from chancy import Chancy, Queue

    async with make_chancy(db) as chancy:
        await chancy.migrate()
        await chancy.declare(
            Queue(
                QUEUE,
                concurrency=args.concurrency,
                executor=Chancy.Executor.Async,
                polling_interval=args.polling_interval,
                eager_polling=not args.no_eager_polling,
            ),
            upsert=True,
        )


async def enqueue_single(db: str, k: int, args: argparse.Namespace) -> float:
    async with make_chancy(db) as chancy:
        job = the_job()
        t = time.perf_counter()
        for _ in range(k):
            await chancy.push(job)
        return time.perf_counter() - t


async def enqueue_bulk(db: str, n: int, args: argparse.Namespace) -> float:
    async with make_chancy(db) as chancy:
        jobs = [the_job() for _ in range(n)]
        t = time.perf_counter()
        async for _refs in chancy.push_many(jobs):
            pass
        return time.perf_counter() - t


async def count(m: dc.Monitor) -> dc.Counts:
    done, failed, pending = await m.row(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
        " count(*) FILTER (WHERE state = 'failed'),"
        " count(*) FILTER (WHERE state IN ('pending', 'running', 'retrying'))"
        " FROM chancy_jobs"
    )
    return int(done), int(failed), int(pending)


async def span(m: dc.Monitor) -> float | None:
    (s,) = await m.row("SELECT extract(epoch FROM max(completed_at) - min(started_at)) FROM chancy_jobs")
    return None if s is None else float(s)


def worker(args: argparse.Namespace) -> None:
    from chancy import Worker

    logging.basicConfig(level=logging.WARNING)

    async def go() -> None:
        async with make_chancy(args.db) as chancy:
            w = Worker(chancy)  # registers SIGTERM/SIGINT handlers: graceful stop
            w.send_outgoing_interval = args.outgoing_interval
            async with w:
                await w.wait_for_shutdown()

    asyncio.run(go())


PEER = dc.Peer(
    name="chancy",
    dist="chancy",
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
    import chancy_bench  # by its own name, so the job's func path is chancy_bench.noop

    sys.exit(dc.main(chancy_bench.PEER))
