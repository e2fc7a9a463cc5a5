"""oban (oban-py, the Python port of Oban) on PostgreSQL: bulk and single enqueue, then ONE
worker draining N noop jobs.

    bench/.venvs/oban/bin/python bench/peers/durable/oban_bench.py [--n 10000] [--limit 100]

oban needs Python >= 3.12 (every 0.5+ release says Requires-Python >=3.12), so its venv is made
with python3.12, not 3.11 like the other peers'.

Settings (docs: defining_queues.md, production.md "Sizing the Connection Pool",
enqueueing_jobs.md, writing_jobs.md, cli.rst; the Oban/Producer/Stager docstrings):
- a class worker with an ``async def process`` that does nothing;
- one queue with ``limit`` 100 (docs: no cap on a queue's limit; "I/O-bound jobs ... can often
  use higher concurrency"); the producer fetches ``limit - running`` jobs per round trip and
  acknowledges completions in batches, so the limit is also its batch size. Default
  ``debounce_interval`` (5 ms), stager interval 1 s, pool 1..10 ("the default of 10 is
  comfortable"), leadership on, pruner/lifeline/refresher at their defaults, metrics off;
- the worker runs like ``oban start`` does: uvloop when installed, orjson for psycopg's JSON,
  a graceful stop on SIGTERM; but with no telemetry logger attached (``oban start`` logs
  every job at INFO; all peers here log at WARNING);
- bulk enqueue with ``Oban.enqueue_many`` (one connection, one transaction); single with
  ``Oban.enqueue`` (one transaction each).

Copied from ../shared/durable-peers/oban_bench.py (see durable_common.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import durable_common as dc
from oban import worker as oban_worker

QUEUE = "default"


@oban_worker(queue=QUEUE)
class Noop:
    async def process(self, job) -> None:
        if dc.INJECT_FAILURE:
            raise RuntimeError("injected failure (DURABLE_BENCH_FAIL=1)")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--limit", type=int, default=100, help="queue limit (default 100)")


def settings(args: argparse.Namespace) -> str:
    return (
        f"async worker; queue limit={args.limit} (= max fetch batch); debounce_interval=5ms;"
        " stager 1s; pool 1..10; leadership on; notifier postgres; uvloop + orjson (as oban start);"
        " no telemetry logger; bulk=enqueue_many(N) on one connection"
    )


async def _pool(db: str):
    from oban import Oban

    return await Oban.create_pool(dc.dsn(db))


async def migrate(db: str, args: argparse.Namespace) -> None:
    from oban.schema import install

    pool = await _pool(db)
    try:
        await install(pool)
    finally:
        await pool.close()


async def enqueue_single(db: str, k: int, args: argparse.Namespace) -> float:
    from oban import Oban

    pool = await _pool(db)
    try:
        async with Oban(pool=pool) as oban:  # client mode: no queues
            t = time.perf_counter()
            for _ in range(k):
                await oban.enqueue(Noop.new({}))
            return time.perf_counter() - t
    finally:
        await pool.close()


async def enqueue_bulk(db: str, n: int, args: argparse.Namespace) -> float:
    from oban import Oban

    pool = await _pool(db)
    try:
        async with Oban(pool=pool) as oban:
            jobs = [Noop.new({}) for _ in range(n)]
            t = time.perf_counter()
            await oban.enqueue_many(jobs)
            return time.perf_counter() - t
    finally:
        await pool.close()


async def count(m: dc.Monitor) -> dc.Counts:
    done, failed, pending = await m.row(
        "SELECT count(*) FILTER (WHERE state = 'completed'),"
        " count(*) FILTER (WHERE state IN ('discarded', 'cancelled')),"
        " count(*) FILTER (WHERE state NOT IN ('completed', 'discarded', 'cancelled'))"
        " FROM oban_jobs"
    )
    return int(done), int(failed), int(pending)


async def span(m: dc.Monitor) -> float | None:
    (s,) = await m.row("SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM oban_jobs")
    return None if s is None else float(s)


def worker(args: argparse.Namespace) -> None:
    import asyncio
    import signal

    from oban import Oban

    logging.basicConfig(level=logging.WARNING)
    try:
        import orjson
        from psycopg.types.json import set_json_dumps, set_json_loads

        set_json_dumps(orjson.dumps)
        set_json_loads(orjson.loads)
    except ImportError:
        pass

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pool = await _pool(args.db)
        try:
            async with Oban(pool=pool, queues={QUEUE: args.limit}):
                await stop.wait()
        finally:
            await pool.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(go())
    else:
        uvloop.run(go())


PEER = dc.Peer(
    name="oban",
    dist="oban",
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
    import oban_bench  # by its own name, so the jobs' worker is oban_bench.Noop

    sys.exit(dc.main(oban_bench.PEER))
