"""Many jobs at once: `enqueue_many` and `POST /api/v1/jobs/batch`, beside the peers' bulk enqueue.

    .venv/bin/python bench/bulk.py [--jobs 10000] [--batch 1000] [--http-jobs 100000]
                                   [--clients 4] [--rounds 3] [--peers pgqueuer,procrastinate]

On a scratch database, each round starting from an empty jobs table:

- `enqueue_many_sync` of `--jobs` echo jobs in batches of `--batch`, a transaction each (what
  `conveyor enqueue --file` does), and the same jobs in one call, one transaction (what the
  peers' bulk enqueue does);
- `POST /api/v1/jobs/batch` with `--batch` jobs a request, `--clients` concurrent clients,
  against a real `conveyor api` process (the bodies are serialised once, before the clock);
- the `--peers` (default PgQueuer): PgQueuer's `Queries.enqueue` (Procrastinate's
  `batch_defer_async`) of `--jobs` noop jobs in one call, each on a fresh database, through
  bench/peers/durable's scripts in the venvs bench/durable.py makes (a peer that cannot be set
  up is left out, with its reason).

Rounds are interleaved (every path once, then again); the table shows each path's median.
Printed, never asserted: the targets are enqueue_many >= 0.5x PgQueuer and the batch route
>= 20,000 jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import durable
import httpx
import orjson
from _harness import (
    CONVEYOR,
    CpuMeter,
    Proc,
    child_env,
    create_database,
    database_url,
    drop_database,
    free_port,
    libpq_url,
    load_average,
    machine,
    make_key,
    migrate,
    pg_backends,
    pg_connect,
    processes,
    scratch_vhost,
    table,
    verdict,
    wait_until,
    work_dir,
)
from _profile import API_MARKERS, Recorder, report

DATABASE = "conveyor_bench_bulk"
ECHO = "app.tasks.example.echo"
# Runs inside a peer's venv: a fresh database, the peer's schema, its bulk enqueue timed.
PEER_SNIPPET = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import durable_common as dc
bench = __import__(sys.argv[2] + "_bench")
n, db = int(sys.argv[3]), "bench_bulk_" + sys.argv[2]
args = dc.parse(bench.PEER, ["--n", str(n), "--db", db])
dc.fresh_database(db)
try:
    asyncio.run(bench.PEER.migrate(db, args))
    print(json.dumps({"seconds": asyncio.run(bench.PEER.enqueue_bulk(db, n, args))}))
finally:
    dc.drop_database(db)
"""
PEERS = ("pgqueuer", "procrastinate")
DEFAULT_PEERS = ("pgqueuer",)
PROFILE_SECONDS = 4  # within the batch phase of a round, which takes several seconds
HTTP_TARGET = 20_000  # jobs/s of the batch route (DESIGN.md, Performance budget)


def say(message: str) -> None:
    print(f"bulk: {message} (load {load_average()})", file=sys.stderr, flush=True)


def empty_jobs() -> None:
    with pg_connect(libpq_url(DATABASE)) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        conn.commit()


def payloads(count: int) -> list[dict[str, str]]:
    return [{"message": f"bench {i}"} for i in range(count)]


def enqueue_many_seconds(jobs: int, batch: int) -> float:
    """`enqueue_many_sync` of `jobs` echo jobs, `batch` a transaction."""
    from sqlalchemy import create_engine

    from app.tasks.example import echo

    engine = create_engine(database_url(DATABASE), pool_size=1)
    try:
        with engine.begin() as conn:
            echo.enqueue_many_sync(payloads(10), session=conn)  # warm: connection, imports
        empty_jobs()
        chunks = [payloads(batch) for _ in range(0, jobs, batch)]
        started = time.perf_counter()
        for chunk in chunks:
            with engine.begin() as conn:
                echo.enqueue_many_sync(chunk, session=conn)
        return time.perf_counter() - started
    finally:
        engine.dispose()


class Api:
    """A real `conveyor api` and a key with the `enqueue` scope."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = make_key(env)

    def post_batches(self, jobs: int, batch: int, clients: int) -> tuple[float, float, float]:
        """(seconds, API CPU seconds, PostgreSQL CPU seconds) for `jobs` jobs in batches."""
        body = orjson.dumps({"jobs": [{"task": ECHO, "payload": p} for p in payloads(batch)]})
        requests = jobs // batch
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}

        async def client(queue: asyncio.Queue[int]) -> None:
            async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60) as http:
                while not queue.empty():
                    queue.get_nowait()
                    response = await http.post("/api/v1/jobs/batch", content=body)
                    assert response.status_code == 202, response.text

        async def run() -> float:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for number in range(requests):
                queue.put_nowait(number)
            started = time.perf_counter()
            await asyncio.gather(*(client(queue) for _ in range(clients)))
            return time.perf_counter() - started

        asyncio.run(_warm(self.url, headers, body))
        empty_jobs()
        api_cpu = CpuMeter("api", lambda: self.process.tree() if self.process else [])
        pg_cpu = CpuMeter("postgres", lambda: pg_backends(DATABASE))
        api_cpu.start()
        pg_cpu.start()
        seconds = asyncio.run(run())
        return seconds, api_cpu.elapsed(), pg_cpu.elapsed()

    process: Proc | None = None


async def _warm(url: str, headers: dict[str, str], body: bytes) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        for _ in range(3):
            assert (await http.post("/api/v1/jobs/batch", content=body)).status_code == 202


def peer_seconds(peer: str, jobs: int) -> float | None:
    python = durable.venv_python(peer)
    folder = durable.SCRIPTS
    done = subprocess.run(
        [str(python), "-c", PEER_SNIPPET, str(folder), peer, str(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )
    if done.returncode != 0:
        say(f"{peer} failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def median_rate(jobs: int, seconds: list[float]) -> float | None:
    return jobs / statistics.median(seconds) if seconds else None


@dataclass
class BulkResult:
    """Median rates (jobs/s) of one run; None where a path was not measured."""

    enqueue_many: float | None = None  # the faster of the two enqueue_many_sync paths
    pgqueuer: float | None = None
    batch_route: float | None = None
    not_measured: dict[str, str] = field(default_factory=dict)  # peer -> why


def main(argv: list[str] | None = None) -> BulkResult:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--http-jobs", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy on the API in the last round")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"comma-separated, of {PEERS}")
    args = parser.parse_args(argv)
    out = work_dir("bulk")
    runs: dict[str, list[float]] = {}
    profile = ""
    cpu: list[tuple[float, float]] = []
    not_measured: dict[str, str] = {}
    peers = []
    for peer in (p.strip() for p in args.peers.split(",") if p.strip()):
        try:
            durable.venv_python(peer)
            peers.append(peer)
        except durable.Unavailable as why:
            not_measured[peer] = str(why)
            say(f"{peer}: not measured: {why}")
    create_database(DATABASE)
    try:
        with scratch_vhost("conveyor_bench_bulk") as broker, processes() as procs:
            env = child_env(DATABASE_URL=database_url(DATABASE), BROKER_URL=broker, LOG_FORMAT="json")
            migrate(env, out)
            os.environ.update({"DATABASE_URL": database_url(DATABASE), "BROKER_URL": broker})
            api = Api(env)
            argv = [CONVEYOR, "api", "--host", "127.0.0.1", "--port", str(api.port)]
            server = api.process = procs.start("api", argv, env, out)
            wait_until(lambda: _answers(api.url), timeout=30, what="the API")
            paths: dict[str, Callable[[], float | None]] = {
                f"enqueue_many_sync, {args.batch:,} a transaction": lambda: enqueue_many_seconds(
                    args.jobs, args.batch
                ),
                "enqueue_many_sync, one call": lambda: enqueue_many_seconds(args.jobs, args.jobs),
                **{f"{peer} bulk enqueue, one call": _peer(peer, args.jobs) for peer in peers},
            }
            for round_number in range(1, args.rounds + 1):
                for name, measure in paths.items():
                    say(f"round {round_number}: {name}")
                    seconds = measure()
                    if seconds is not None:
                        runs.setdefault(name, []).append(seconds)
                say(f"round {round_number}: POST /api/v1/jobs/batch")
                recorder = None
                if args.profile and round_number == args.rounds:
                    recorder = Recorder(server.pid, out / "api-profile.txt", duration=PROFILE_SECONDS)
                seconds, api_s, pg_s = api.post_batches(args.http_jobs, args.batch, args.clients)
                if recorder is not None:
                    profile = report(recorder.finish(API_MARKERS), "the API under batches")
                runs.setdefault("http", []).append(seconds)
                cpu.append((api_s, pg_s))
    finally:
        drop_database(DATABASE)
    result = summary(args, runs, cpu)
    result.not_measured = not_measured
    for peer, reason in not_measured.items():
        print(f"{peer} bulk enqueue: not measured: {reason}")
    if profile:
        print(profile)
    return result


def _peer(peer: str, jobs: int) -> Callable[[], float | None]:
    return lambda: peer_seconds(peer, jobs)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def summary(
    args: argparse.Namespace, runs: dict[str, list[float]], cpu: list[tuple[float, float]]
) -> BulkResult:
    http = runs.pop("http", [])
    pgqueuer = median_rate(args.jobs, runs.get("pgqueuer bulk enqueue, one call", []))
    rows = []
    for name, seconds in runs.items():
        rate = median_rate(args.jobs, seconds)
        ratio = None if pgqueuer is None or rate is None else rate / pgqueuer
        rows.append((name, f"{args.jobs:,}", rate, "-" if ratio is None else f"{ratio:.2f}x"))
    http_rate = median_rate(args.http_jobs, http)
    label = f"POST /api/v1/jobs/batch, {args.batch:,} a request, {args.clients} clients"
    rows.append((label, f"{args.http_jobs:,}", http_rate, "-"))
    print(f"\n## Bulk enqueue: median of {args.rounds} interleaved rounds ({machine()})\n")
    print(table(["path", "jobs", "jobs/s", "vs PgQueuer"], rows))
    best = max(
        (median_rate(args.jobs, s) or 0.0 for n, s in runs.items() if n.startswith("enqueue_many")),
        default=0.0,
    )
    print(f"\nenqueue_many vs PgQueuer: {verdict(None if pgqueuer is None else best / pgqueuer, 0.5)}")
    if http_rate is not None:
        met = "met" if http_rate >= HTTP_TARGET else "NOT met"
        print(f"batch route: {http_rate:,.0f} jobs/s (target >= {HTTP_TARGET:,}: {met})")
    if cpu:
        api_ms = statistics.median(a for a, _ in cpu) * 1e6 / args.http_jobs
        pg_ms = statistics.median(p for _, p in cpu) * 1e6 / args.http_jobs
        print(f"batch route, CPU per job: API process {api_ms:.1f} µs, PostgreSQL {pg_ms:.1f} µs")
    return BulkResult(enqueue_many=best or None, pgqueuer=pgqueuer, batch_route=http_rate)


if __name__ == "__main__":
    main()
