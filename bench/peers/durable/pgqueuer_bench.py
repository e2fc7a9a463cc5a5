"""pgqueuer on PostgreSQL: bulk and single enqueue, then ONE worker draining N noop jobs.

    bench/.venvs/pgqueuer/bin/python bench/peers/durable/pgqueuer_bench.py [--n 10000] [--batch-size 25]

Settings (docs: guides/performance-tuning.md "Batch size", "Connection pooling", "Durability vs.
throughput", "Autovacuum tuning", "Quick-reference checklist"; reference/drivers.md;
comparisons/benchmarks.md for asyncpg over psycopg):
- an ``async def`` entrypoint (pgqueuer accepts async entrypoints only);
- asyncpg, one direct connection for the QueueManager ("Use a dedicated connection for
  LISTEN ... not a pool");
- ``batch_size`` (default 25; the library default is 10): "Increase batch_size when jobs are
  short-lived (< 1 s)"; 25 is the docs' own example. ``max_concurrent_tasks`` unset
  (unlimited, the default);
- durability ``durable`` (the default: logged tables, like Conveyor's ledger) and the
  recommended ``pgq autovac`` settings applied after install (checklist);
- the worker runs as ``pgq run`` does: ``pgqueuer.run(factory, ...)`` on uvloop when installed;
- bulk enqueue: one ``Queries.enqueue`` call with lists (one INSERT ... UNNEST); single: the
  scalar form, each autocommitted on one connection;
- logging at WARNING, as for every peer here.
Completed jobs leave the ``pgqueuer`` table and are logged as 'successful' in ``pgqueuer_log``
(in batches: the status buffer flushes every ``batch_size`` completions or on a timer); that is
what is counted. Picks are logged too, which gives the first-pick -> last-success span.

Copied from ../shared/durable-peers/pgqueuer_bench.py (see durable_common.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from datetime import timedelta

import durable_common as dc

ENTRYPOINT = "noop"


async def _queries(db: str):
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(dc.dsn(db))
    return conn, Queries(AsyncpgDriver(conn))


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--batch-size", type=int, default=25, help="dequeue batch size (default 25)")
    ap.add_argument("--dequeue-timeout", type=float, default=30.0, help="seconds (library default 30)")


def settings(args: argparse.Namespace) -> str:
    return (
        f"async entrypoint; batch_size={args.batch_size}; max_concurrent_tasks=unlimited;"
        f" dequeue_timeout={args.dequeue_timeout:g}s; LISTEN/NOTIFY on; asyncpg single connection;"
        " durability=durable; pgq autovac applied; uvloop (as pgq run); log WARNING;"
        " bulk=Queries.enqueue(lists of N) in one statement"
    )


async def migrate(db: str, args: argparse.Namespace) -> None:
    conn, q = await _queries(db)
    try:
        await q.install()
        await q.optimize_autovacuum()
    finally:
        await conn.close()


async def enqueue_single(db: str, k: int, args: argparse.Namespace) -> float:
    conn, q = await _queries(db)
    try:
        t = time.perf_counter()
        for _ in range(k):
            await q.enqueue(ENTRYPOINT, None)
        return time.perf_counter() - t
    finally:
        await conn.close()


async def enqueue_bulk(db: str, n: int, args: argparse.Namespace) -> float:
    conn, q = await _queries(db)
    try:
        entrypoints, payloads, priorities = [ENTRYPOINT] * n, [None] * n, [0] * n
        t = time.perf_counter()
        await q.enqueue(entrypoints, payloads, priorities)
        return time.perf_counter() - t
    finally:
        await conn.close()


async def count(m: dc.Monitor) -> dc.Counts:
    done, failed, pending = await m.row(
        "SELECT (SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'),"
        " (SELECT count(*) FROM pgqueuer_log WHERE status IN ('exception', 'canceled', 'deleted'))"
        "  + (SELECT count(*) FROM pgqueuer WHERE status = 'failed'),"
        " (SELECT count(*) FROM pgqueuer WHERE status IN ('queued', 'picked'))"
    )
    return int(done), int(failed), int(pending)


async def span(m: dc.Monitor) -> float | None:
    # picks are logged when claimed; completions when the status buffer is flushed
    (s,) = await m.row(
        "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
        " - min(created) FILTER (WHERE status = 'picked')) FROM pgqueuer_log"
    )
    return None if s is None else float(s)


def worker(args: argparse.Namespace) -> None:
    import asyncio

    import asyncpg
    import pgqueuer
    from pgqueuer import PgQueuer

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)

    @contextlib.asynccontextmanager
    async def factory():
        conn = await asyncpg.connect(dc.dsn(args.db))
        pgq = PgQueuer.from_asyncpg_connection(conn)

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job) -> None:
            if dc.INJECT_FAILURE:
                raise RuntimeError("injected failure (DURABLE_BENCH_FAIL=1)")

        try:
            yield pgq
        finally:
            await conn.close()

    coro = pgqueuer.run(  # what `pgq run` calls; SIGTERM/SIGINT stop it
        factory,
        batch_size=args.batch_size,
        dequeue_timeout=timedelta(seconds=args.dequeue_timeout),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


PEER = dc.Peer(
    name="pgqueuer",
    dist="pgqueuer",
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
    import pgqueuer_bench  # by its own name, like the other peers' scripts

    sys.exit(dc.main(pgqueuer_bench.PEER))
