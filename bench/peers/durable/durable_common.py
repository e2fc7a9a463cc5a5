"""Shared harness for bench/peers/durable/<peer>_bench.py: Postgres-backed Python job queues.

Copied, with its four peer scripts and their pinned requirements, from the durable-peers
harness the project was first measured with (`../shared/durable-peers`, its README.md);
changed only in where the worker logs go. `bench/durable.py` makes each peer's venv and
runs its script; each script runs in that venv, never in Conveyor's.

Each peer script runs the same steps (see README.md):

1. a fresh database ``bench_<peer>``, the peer's schema;
2. ENQUEUE single: ``--single`` jobs (default 2,000), one call (one transaction) each;
3. a fresh database again, the schema again (so the drain starts on a clean table);
4. ENQUEUE bulk: ``--n`` jobs (default 10,000) with the peer's batch API, timed;
5. DRAIN: ONE worker process is started (this same script with ``--worker``); the clock runs
   from just before it is spawned until the database shows every job in the peer's
   succeeded state. The worker's CPU (its process tree, via psutil) and the CPU of the
   PostgreSQL backends serving the bench database are sampled while it drains;
6. one JSON line on stdout; the database is dropped (unless ``--keep``).

Progress goes to stderr; only the JSON line goes to stdout. Exit status 0 only when all N jobs
succeeded. Needs psutil and the peer's own driver (psycopg or asyncpg) and ``psql``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# The workers' logs: outside the checkout (a fresh folder per run from bench/durable.py).
LOGS = Path(os.environ.get("DURABLE_LOGS") or Path(tempfile.gettempdir()) / "conveyor-bench" / "durable-logs")
PGHOST = os.environ.get("BENCH_PGHOST", "127.0.0.1")
PGPORT = os.environ.get("BENCH_PGPORT", "5432")
PGUSER = os.environ.get("BENCH_PGUSER", "postgres")

Counts = tuple[int, int, int]  # (succeeded, failed for good, still pending/running)
# Test switch for the failure path: every noop raises (the run must then report ok=false).
INJECT_FAILURE = os.environ.get("DURABLE_BENCH_FAIL") == "1"


def dsn(db: str) -> str:
    return f"postgresql://{PGUSER}@{PGHOST}:{PGPORT}/{db}"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- databases (through psql, so that no driver is needed for it) -----------------------------


def psql(sql: str, db: str = "postgres") -> str:
    cmd = ["psql", "-h", PGHOST, "-p", PGPORT, "-U", PGUSER, "-d", db, "-qAtX", "-v", "ON_ERROR_STOP=1"]
    done = subprocess.run([*cmd, "-c", sql], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"psql failed ({sql!r}): {done.stderr.strip()}")
    return done.stdout.strip()


def wait_for_postgres(timeout: float = 120.0) -> None:
    """The shared server may be restarted by other work on the machine: wait until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psql("SELECT 1")
            return
        except RuntimeError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not answering after {timeout:.0f}s: {exc}") from exc
            time.sleep(1.0)


def fresh_database(name: str) -> None:
    wait_for_postgres()
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    try:
        wait_for_postgres(30)
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except RuntimeError as exc:
        say(f"could not drop {name}: {exc}")


# -- a plain connection of the harness's own: job counts and backend pids ----------------------


class Monitor:
    def __init__(self, conn: Any, kind: str) -> None:
        self.conn = conn
        self.kind = kind

    @classmethod
    async def open(cls, db: str) -> Monitor:
        try:
            import psycopg
        except ImportError:
            import asyncpg

            return cls(await asyncpg.connect(dsn(db)), "asyncpg")
        return cls(await psycopg.AsyncConnection.connect(dsn(db), autocommit=True), "psycopg")

    async def rows(self, sql: str) -> list[tuple]:
        if self.kind == "asyncpg":
            return [tuple(r) for r in await self.conn.fetch(sql)]
        cur = await self.conn.execute(sql)
        return list(await cur.fetchall())

    async def row(self, sql: str) -> tuple:
        return (await self.rows(sql))[0]

    async def close(self) -> None:
        await self.conn.close()


# -- CPU -------------------------------------------------------------------------------------


def tree_cpu(proc: psutil.Process) -> float:
    """user+system seconds of a process and its live descendants (and its reaped children)."""
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    for i, p in enumerate(procs):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
        if i == 0:
            total += t.children_user + t.children_system
    return total


class BackendCpu:
    """CPU of the PostgreSQL backends connected to the bench database (not the monitor's own)."""

    SQL = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.procs: dict[int, psutil.Process] = {}
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.ok = True

    async def refresh(self, baseline: bool = False) -> None:
        for (pid,) in await self.monitor.rows(self.SQL):
            if pid in self.procs:
                continue
            try:
                p = psutil.Process(pid)
                t = p.cpu_times()
            except psutil.AccessDenied:
                self.ok = False
                continue
            except psutil.NoSuchProcess:
                continue
            self.procs[pid] = p
            self.base[pid] = t.user + t.system if baseline else 0.0
            self.last[pid] = t.user + t.system

    def sample(self) -> None:
        for pid, p in self.procs.items():
            try:
                t = p.cpu_times()
                self.last[pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # keep its last reading

    def total(self) -> float | None:
        return sum(self.last[p] - self.base[p] for p in self.procs) if self.ok else None


# -- the drain -------------------------------------------------------------------------------


@dataclass
class DrainResult:
    seconds: float  # worker spawned -> all N done (as the database shows it)
    first_done_s: float | None  # worker spawned -> the first poll that saw a job done
    done_at_first: int
    mark_s: float | None  # the first poll at or after 1 s
    done_at_mark: int
    worker_cpu_s: float  # its process tree, spawn -> all done (imports and connections included)
    worker_cpu_at_first: float
    pg_cpu_s: float | None  # backends of the bench database, spawn -> all done
    pg_cpu_at_first: float | None
    worker_rss_mib: float
    counts: Counts
    polls: int


async def drain(
    argv: list[str],
    n: int,
    count: Callable[[Monitor], Awaitable[Counts]],
    monitor: Monitor,
    timeout: float,
    poll: float,
    log_path: Path,
) -> DrainResult:
    backends = BackendCpu(monitor)
    await backends.refresh(baseline=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        ps = psutil.Process(proc.pid)
        first = mark = None
        done_at_first = done_at_mark = 0
        cpu_at_first = 0.0
        pg_at_first: float | None = None
        polls = 0
        next_refresh = 0.0
        try:
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"worker exited with status {proc.returncode}; log tail:\n{tail}")
                now = time.perf_counter() - t0  # before the query: what it counts was done by then
                done, failed, pending = await count(monitor)
                polls += 1
                if first is None and done > 0:
                    # the window Conveyor's bench/drain.py opens for its CPU-per-job figures
                    first, done_at_first, cpu_at_first = now, done, tree_cpu(ps)
                    await backends.refresh()
                    backends.sample()
                    pg_at_first = backends.total()
                if mark is None and now >= 1.0:
                    mark, done_at_mark = now, done
                if done + failed >= n:
                    break
                if now > timeout:
                    raise TimeoutError(
                        f"{done}/{n} done ({failed} failed, {pending} pending) after {now:.1f}s"
                    )
                if now >= next_refresh:
                    await backends.refresh()
                    next_refresh = now + 0.25
                backends.sample()
                await asyncio.sleep(poll)
            seconds = now
            cpu = tree_cpu(ps)
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]) / 2**20
            await backends.refresh()
            backends.sample()
        finally:
            stop(proc)
    return DrainResult(
        seconds=seconds,
        first_done_s=first,
        done_at_first=done_at_first,
        mark_s=mark,
        done_at_mark=done_at_mark,
        worker_cpu_s=cpu,
        worker_cpu_at_first=cpu_at_first,
        pg_cpu_s=backends.total(),
        pg_cpu_at_first=pg_at_first,
        worker_rss_mib=rss,
        counts=(done, failed, pending),
        polls=polls,
    )


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the worker's own process group (it was started in a new session), then KILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# -- the peer interface and main ------------------------------------------------------------


@dataclass
class Peer:
    name: str  # also the venv's name and the script's prefix
    dist: str  # distribution name, for its version
    add_args: Callable[[argparse.ArgumentParser], None]
    settings: Callable[[argparse.Namespace], str]
    migrate: Callable[[str, argparse.Namespace], Awaitable[None]]
    enqueue_single: Callable[[str, int, argparse.Namespace], Awaitable[float]]  # -> seconds
    enqueue_bulk: Callable[[str, int, argparse.Namespace], Awaitable[float]]  # -> seconds
    count: Callable[[Monitor], Awaitable[Counts]]
    worker: Callable[[argparse.Namespace], None]  # runs in the worker process until SIGTERM
    # first job started -> last job finished by the peer's own timestamps (None: not recorded)
    span: Callable[[Monitor], Awaitable[float | None]] | None = None


def parse(peer: Peer, argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=f"{peer.name}: enqueue and one-worker drain of noop jobs")
    ap.add_argument("--n", type=int, default=10_000, help="jobs to bulk-enqueue and drain (default 10000)")
    ap.add_argument("--single", type=int, default=2_000, help="jobs enqueued one at a time (default 2000)")
    ap.add_argument("--db", default=f"bench_{peer.name}", help="scratch database (dropped at the end)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the drain")
    ap.add_argument("--poll", type=float, default=0.05, help="seconds between the harness's count queries")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    peer.add_args(ap)
    return ap.parse_args(argv)


def rate(jobs: float, seconds: float | None) -> float | None:
    return round(jobs / seconds, 1) if seconds and seconds > 0 else None


def per_job_ms(total: float | None, at_first: float | None, jobs: int) -> float | None:
    if total is None or at_first is None or jobs <= 0:
        return None
    return round(1000 * (total - at_first) / jobs, 3)


async def measure(peer: Peer, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    db = args.db
    fresh_database(db)
    await peer.migrate(db, args)
    single_s = await peer.enqueue_single(db, args.single, args)
    say(f"single enqueue: {args.single} in {single_s:.2f}s")

    fresh_database(db)  # the drain starts on a clean table holding exactly N jobs
    await peer.migrate(db, args)
    bulk_s = await peer.enqueue_bulk(db, args.n, args)
    say(f"bulk enqueue: {args.n} in {bulk_s:.2f}s")

    monitor = await Monitor.open(db)
    try:
        before = await peer.count(monitor)
        if before != (0, 0, args.n):
            raise RuntimeError(
                f"expected (0 done, 0 failed, {args.n} pending) before the drain, got {before}"
            )
        script = str(Path(sys.argv[0]).resolve())
        worker_argv = [sys.executable, script, *argv, "--db", db, "--worker"]
        say(f"drain: starting one worker: {' '.join(worker_argv[1:])}")
        log_path = LOGS / f"{peer.name}-worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
        d = await drain(worker_argv, args.n, peer.count, monitor, args.timeout, args.poll, log_path)
        if log_path.stat().st_size == 0:
            log_path.unlink()  # keep only the logs that say something
        final = await peer.count(monitor)  # after the worker has stopped
        span = await peer.span(monitor) if peer.span else None
    finally:
        await monitor.close()
    say(
        f"drain: {args.n} in {d.seconds:.2f}s from spawn, first done seen at "
        f"{'-' if d.first_done_s is None else f'{d.first_done_s:.2f}'}s; "
        f"final (succeeded, failed, pending) = {final}"
    )
    steady_s = d.seconds - d.mark_s if d.mark_s is not None else None
    after_first = args.n - d.done_at_first
    return dict(
        enqueue_bulk_per_s=rate(args.n, bulk_s),
        enqueue_single_per_s=rate(args.single, single_s),
        drain_per_s_incl_startup=rate(args.n, d.seconds),
        drain_per_s_steady=rate(args.n - d.done_at_mark, steady_s),
        worker_cpu_s=round(d.worker_cpu_s, 3),
        settings=peer.settings(args),
        # extras
        ok=final[0] == args.n,
        succeeded=final[0],
        failed=final[1],
        pending=final[2],
        single=args.single,
        drain_s=round(d.seconds, 3),
        first_done_s=None if d.first_done_s is None else round(d.first_done_s, 3),
        span_s=None if span is None else round(span, 3),
        drain_per_s_span=rate(args.n, span),
        worker_cpu_ms_per_job=per_job_ms(d.worker_cpu_s, d.worker_cpu_at_first, after_first),
        pg_backend_cpu_s=None if d.pg_cpu_s is None else round(d.pg_cpu_s, 3),
        pg_cpu_ms_per_job=per_job_ms(d.pg_cpu_s, d.pg_cpu_at_first, after_first),
        worker_rss_mib=round(d.worker_rss_mib, 1),
        polls=d.polls,
        poll_s=args.poll,
        python=platform.python_version(),
        postgres=psql("SHOW server_version").split()[0],
        load_1m=round(os.getloadavg()[0], 2),
    )


async def run(peer: Peer, args: argparse.Namespace, argv: list[str]) -> int:
    version = importlib.metadata.version(peer.dist)
    say(f"{peer.name} {version}: database {args.db}; settings: {peer.settings(args)}")
    result: dict[str, Any] = {"peer": peer.name, "version": version, "n": args.n}
    try:
        try:
            result.update(await measure(peer, args, argv))
        except Exception as exc:  # reported in the JSON line too, so run.sh's table shows it
            say(f"FAILED: {type(exc).__name__}: {exc}")
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000], settings=peer.settings(args))
        print(json.dumps(result), flush=True)
    finally:  # also on Ctrl-C
        if not args.keep:
            drop_database(args.db)
    return 0 if result.get("ok") else 1


def main(peer: Peer, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(peer, argv)
    if args.worker:
        peer.worker(args)
        return 0
    return asyncio.run(run(peer, args, [a for a in argv if a != "--worker"]))
