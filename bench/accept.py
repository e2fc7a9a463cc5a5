"""Accept: POST /api/v1/jobs → 202 per second, one uvicorn process each, Conveyor beside its peers.

    python bench/accept.py                         # bare, celery, conveyor, conveyor-no-relay
    python bench/accept.py --duration 30 --connections 64
    python bench/accept.py --systems conveyor --profile   # py-spy on the API under load
    BENCH_SCRATCH=accept_mine python bench/accept.py   # scratch database and vhosts of that name

Each server runs alone (one at a time), one uvicorn process with uvloop and httptools, on a
port of its own; wrk (one thread, from another process) drives it with the same JSON body:

- bare: a FastAPI endpoint that validates the body with pydantic and answers 202 (the ceiling).
- celery: the same endpoint calling Celery's `.delay()` on an amqp broker (its own vhost), as
  a plain `def`, so FastAPI runs the blocking publish in its thread pool (FastAPI's advice).
- celery-async: the same as an `async def` publishing on the event loop: less CPU per
  request, worse tail latency; the budget is checked against both.
- conveyor: `conveyor api` on a scratch database (conveyor_bench, or BENCH_SCRATCH) with
  `conveyor relay` running beside it, publishing what the API accepts, as it is deployed.
- conveyor-redis: `conveyor` with BROKER_URL=redis://… (a db number of the bench's own on the
  shared Redis, 127.0.0.1:6379), the relay publishing there: `--systems conveyor,conveyor-redis`.
- conveyor-no-relay: the API alone (a diagnostic: the accept path without the relay's load).
- conveyor-open: `conveyor api` with the key check taken out of the accept route (a bench-only
  peer, peers/conveyor_open.py), relay running: beside `conveyor`, what access costs.

After its run, Conveyor's API also gets --rejected (200) bodies of --rejected-mb (50) MB,
half with Content-Length, half chunked, and its RSS is read before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _harness import (
    BENCH_DIR,
    CONVEYOR,
    ECHO_PAYLOAD,
    ECHO_TASK,
    CpuMeter,
    Proc,
    Query,
    WaitSampler,
    broker_server,
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
    processes,
    queue_depth,
    rss_mib,
    run_systems,
    scratch_redis,
    scratch_vhost,
    source_version,
    table,
    verdict,
    wait_until,
    work_dir,
)
from _profile import API_MARKERS, Recorder, report

# Scratch names; BENCH_SCRATCH gives a run names of its own (two benches on one server never
# meet), as in drain.py. BENCH_SUFFIX, appended to them, is still read.
DATABASE = os.environ.get("BENCH_SCRATCH", "conveyor_bench") + os.environ.get("BENCH_SUFFIX", "")
SYSTEMS = (
    "bare",
    "celery",
    "celery-async",
    "conveyor",
    "conveyor-open",
    "conveyor-redis",
    "conveyor-no-relay",
)
DEFAULT_SYSTEMS = ("bare", "celery", "celery-async", "conveyor", "conveyor-open")
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
BODY = json.dumps({"task": ECHO_TASK, "payload": ECHO_PAYLOAD})


@dataclass
class Options:
    duration: int
    warmup: int
    connections: int
    rejected: int
    rejected_mb: int
    keep: bool
    profile: bool


@dataclass
class AcceptResult:
    system: str
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # non-2xx answers, socket errors and timeouts
    server_cpu: float  # cores the server process used on average
    db_cpu: float | None  # cores the PostgreSQL backends of the scratch database used
    relay_cpu: float | None
    broker_cpu: float  # cores the broker's server used (shared with anyone else)
    wrk_cpu: float  # cores wrk used: well under 1 means it was not the bottleneck
    rss_mib: float  # the server after the run
    load_before: str
    load_after: str
    stored: str = ""  # what a 202 left behind: rows in the ledger, messages in the queue
    pg_waits: dict[str, float] = field(default_factory=dict)
    accepted: int = 0  # 202s over warm-up and run
    rejected: dict[str, float] = field(default_factory=dict)
    profile: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def server_ms(self) -> float:
        """CPU milliseconds the server process spent per request."""
        return 1000.0 * self.server_cpu / self.rate if self.rate else 0.0

    @property
    def ceiling(self) -> float:
        """Requests/s if the server had one core to itself (one uvicorn process uses one)."""
        return 1000.0 / self.server_ms if self.server_ms else 0.0


# -- load --------------------------------------------------------------------------------------


def wrk(port: int, seconds: int, connections: int) -> tuple[dict[str, float], float]:
    """One wrk run; its summary and the CPU seconds wrk itself used."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
    argv.append(f"http://127.0.0.1:{port}/api/v1/jobs")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, env={**os.environ, "BENCH_BODY": BODY}
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line.removeprefix("WRK_JSON ")), used
    raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")


def wait_live(proc: Proc, port: int, timeout: float = 60.0) -> None:
    def live() -> bool:
        proc.check_alive()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(live, timeout, f"{proc.name} to answer /health/live")


def uvicorn_argv(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]


def measure(
    system: str,
    server: Proc,
    port: int,
    opts: Options,
    out: Path,
    db: bool = False,
    relay: Proc | None = None,
    broker: str = "amqp://",
) -> AcceptResult:
    wait_live(server, port)
    warm, _ = wrk(port, opts.warmup, opts.connections)
    load_before = load_average()
    meters = {
        "server": CpuMeter("server", server.tree),
        "broker": CpuMeter("broker", broker_server(broker)),
        **({"db": CpuMeter("db", lambda: pg_backends(DATABASE))} if db else {}),
        **({"relay": CpuMeter("relay", relay.tree)} if relay else {}),
    }
    for meter in meters.values():
        meter.start()
    recorder = None
    if opts.profile:
        recorder = Recorder(server.pid, out / f"{system}-profile.txt", duration=opts.duration)
    sampler = WaitSampler(DATABASE).start() if db else None
    summary, wrk_seconds = wrk(port, opts.duration, opts.connections)
    seconds = summary["duration_us"] / 1e6
    used = {name: meter.elapsed() / seconds for name, meter in meters.items()}
    pg_waits = sampler.stop() if sampler else {}
    server.check_alive()
    profile = ""
    if recorder is not None:
        profile = report(recorder.finish(API_MARKERS), f"{system} API under wrk -c{opts.connections}")
    errors = sum(int(summary[k]) for k in ("connect_errors", "read_errors", "write_errors", "status_errors"))
    # wrk counts every answer it read; status_errors are those >= 400. The rest were 202s.
    accepted = sum(int(run["requests"]) - int(run["status_errors"]) for run in (warm, summary))
    return AcceptResult(
        system=system,
        requests=int(summary["requests"]),
        seconds=seconds,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=errors + int(summary["timeouts"]),
        server_cpu=used["server"],
        db_cpu=used.get("db"),
        relay_cpu=used.get("relay"),
        broker_cpu=used["broker"],
        wrk_cpu=wrk_seconds / seconds,
        rss_mib=rss_mib(server.tree()[0]),
        load_before=load_before,
        load_after=load_average(),
        pg_waits=pg_waits,
        profile=profile,
        accepted=accepted,
    )


# -- rejected bodies ---------------------------------------------------------------------------


def send_rejected(port: int, size: int, chunked: bool, timeout: float = 30.0) -> tuple[str, int]:
    """Stream a `size`-byte body until the server answers; (status or failure, bytes sent)."""
    head = "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    piece = b"x" * 65536
    deadline = time.monotonic() + timeout
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        pending = b""
        try:
            while time.monotonic() < deadline:
                readable, writable, _ = select.select([sock], [sock], [], 1.0)
                if readable:
                    break  # the server answered (or closed) before the whole body was sent
                if not writable:
                    continue
                if not pending:
                    if sent >= size:
                        if chunked:
                            sock.sendall(b"0\r\n\r\n")
                        break
                    body = piece[: min(len(piece), size - sent)]
                    pending = (f"{len(body):x}\r\n".encode() + body + b"\r\n") if chunked else body
                    sent += len(body)
                written = sock.send(pending)
                pending = pending[written:]
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-body: the answer may still be readable
        return _status(sock, deadline), sent


def _status(sock: socket.socket, deadline: float) -> str:
    answer = b""
    try:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except (ConnectionResetError, TimeoutError, OSError):
        pass
    parts = answer.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and parts[1].isdigit() else "reset before an answer"


def rejected_bodies(server: Proc, port: int, count: int, megabytes: int) -> dict[str, float]:
    """RSS of the API before, during (peak) and after `count` oversized bodies."""
    proc = server.tree()[0]
    before = rss_mib(proc)
    peak = [before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_mib(proc))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    outcomes: dict[str, int] = {}
    sent_total = 0
    started = time.monotonic()
    try:
        for i in range(count):
            status, sent = send_rejected(port, megabytes * 1_000_000, chunked=bool(i % 2))
            outcomes[status] = outcomes.get(status, 0) + 1
            sent_total += sent
    finally:
        stop.set()
        watcher.join()
    wait_live(server, port)
    after = rss_mib(proc)
    return {
        "bodies": count,
        "MB each": megabytes,
        "RSS before MiB": before,
        "RSS peak MiB": peak[0],
        "RSS after MiB": after,
        "MiB sent per body (avg)": sent_total / count / (1024 * 1024),
        "seconds": time.monotonic() - started,
        **{f"answers {k}": float(v) for k, v in sorted(outcomes.items())},
    }


# -- the systems -------------------------------------------------------------------------------


def run_bare(opts: Options) -> AcceptResult:
    out = work_dir("accept-bare")
    port = free_port()
    with processes() as procs:
        server = procs.start("bare", uvicorn_argv("peers.bare_api:app", port) + QUIET, child_env(), out)
        return measure("bare", server, port, opts, out)


def run_celery(opts: Options, system: str) -> AcceptResult:
    out = work_dir(f"accept-{system}")
    port = free_port()
    endpoint = "async" if system == "celery-async" else "sync"
    with scratch_vhost(DATABASE + "_celery_api", opts.keep) as broker, processes() as procs:
        env = child_env(BENCH_BROKER_URL=broker, BENCH_CELERY_ENDPOINT=endpoint)
        server = procs.start(system, uvicorn_argv("peers.celery_api:app", port) + QUIET, env, out)
        result = measure(system, server, port, opts, out)
        time.sleep(1.0)
        depth = queue_depth(broker, "celery")
        result.stored = f"{result.accepted:,} answers 202 -> {depth:,} messages in the queue"
        return result


def run_conveyor(opts: Options, system: str) -> AcceptResult:
    relay = system != "conveyor-no-relay"
    out = work_dir(f"accept-{system}")
    port = free_port()
    scratch = scratch_redis(opts.keep) if system == "conveyor-redis" else scratch_vhost(DATABASE, opts.keep)
    with scratch as broker, processes() as procs:
        create_database(DATABASE)
        try:
            # The key check runs in full (a rate limit high enough never to refuse a request).
            env = child_env(
                DATABASE_URL=database_url(DATABASE),
                BROKER_URL=broker,
                LOG_FORMAT="json",
                RATE_LIMIT="1000000/second",
            )
            migrate(env, out)
            os.environ["BENCH_KEY"] = make_key(env)
            relay_proc = procs.start("relay", [CONVEYOR, "relay"], env, out) if relay else None
            argv = [CONVEYOR, "api", "--host", "127.0.0.1", "--port", str(port)]
            if system == "conveyor-open":
                argv = uvicorn_argv("peers.conveyor_open:app", port) + QUIET
            server = procs.start("api", argv, env, out)
            result = measure(system, server, port, opts, out, db=True, relay=relay_proc, broker=broker)
            result.stored = f"{result.accepted:,} answers 202 counted by wrk -> {_ledger_rows()}"
            if system == "conveyor" and opts.rejected:
                result.rejected = rejected_bodies(server, port, opts.rejected, opts.rejected_mb)
            return result
        finally:
            procs.stop_all()
            if not opts.keep:
                drop_database(DATABASE)


def _ledger_rows() -> str:
    with Query(libpq_url(DATABASE)) as query:
        row = query.one("SELECT count(*), count(published_at) FROM jobs")
    total, published = int(row[0]), int(row[1])
    return f"{total:,} rows in the ledger ({published:,} published so far)"


QUIET = ["--no-access-log", "--log-level", "warning", "--no-server-header"]


def run(system: str, opts: Options) -> AcceptResult:
    if system == "bare":
        return run_bare(opts)
    if system.startswith("celery"):
        return run_celery(opts, system)
    return run_conveyor(opts, system)


# -- report ------------------------------------------------------------------------------------


def render(results: list[AcceptResult], opts: Options) -> str:
    headers = [
        "system",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "server CPU",
        "server CPU ms/req",
        "1-core ceiling req/s",
        "PG CPU",
        "relay CPU",
        "broker CPU*",
        "wrk CPU",
        "RSS MiB",
        "load before -> after",
    ]
    rows = [
        [
            r.system,
            r.rate,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.errors,
            r.server_cpu,
            r.server_ms,
            r.ceiling,
            r.db_cpu,
            r.relay_cpu,
            r.broker_cpu,
            r.wrk_cpu,
            r.rss_mib,
            f"{r.load_before} -> {r.load_after}",
        ]
        for r in results
    ]
    lines = [
        f"## Accept: POST /api/v1/jobs, wrk -t1 -c{opts.connections} -d{opts.duration}s"
        f" (after {opts.warmup}s of warm-up)",
        "",
        f"Machine: {machine()}. Source: {source_version()}.",
        "",
        table(headers, rows),
        "",
        "CPU columns are cores used on average during the run (1.00 = one core busy).",
        "The 1-core ceiling is 1000 / server CPU ms per request: the rate the server reaches when it",
        "has a core to itself and nothing else (database, relay) holds it back. It is much less",
        "sensitive to the machine's load than req/s, so compare ceilings when the load is high.",
        "*The broker's CPU (RabbitMQ's; redis-server's for conveyor-redis) includes whatever else uses",
        "the same server meanwhile.",
    ]
    lines += [f"- {r.system}: {r.stored}" for r in results if r.stored]
    if any(r.stored for r in results):
        in_flight = 2 * opts.connections
        lines.append(f"  (wrk does not count answers in flight when it stops: up to {in_flight} per system)")
    by = {r.system: r for r in results}
    conveyor = by.get("conveyor") or by.get("conveyor-no-relay")
    if conveyor:
        lines += ["", f"Against the budget (DESIGN.md, Performance budget), {conveyor.system}:"]
        lines += _ratios(conveyor, by)
    redis, rabbit = by.get("conveyor-redis"), by.get("conveyor")
    if redis and rabbit and rabbit.rate:
        ratio = redis.rate / rabbit.rate
        lines += ["", f"Redis as the broker vs RabbitMQ (conveyor-redis / conveyor): {ratio:.2f}x req/s"]
    for r in results:
        if r.pg_waits:
            lines += [
                "",
                f"PostgreSQL backends of the ledger during the {r.system} run (pg_stat_activity, 50/s):",
            ]
            lines += [f"- {k}: {v:.2f}" for k, v in r.pg_waits.items() if v >= 0.005]
    for r in results:
        if r.rejected:
            lines += ["", f"Rejected bodies ({r.system} API):"]
            lines += [f"- {k}: {v:,.1f}" for k, v in r.rejected.items()]
            grew = r.rejected["RSS after MiB"] - r.rejected["RSS before MiB"]
            lines.append(f"- RSS grew by {grew:.1f} MiB over {r.rejected['bodies']:.0f} bodies")
    return "\n".join(lines) + "\n"


def _ratios(conveyor: AcceptResult, by: dict[str, AcceptResult]) -> list[str]:
    def ratio(peer: str) -> float | None:
        other = by.get(peer)
        return conveyor.rate / other.rate if other and other.rate else None

    def cpu_ratio(peer: str) -> str:
        other = by.get(peer)
        if not (other and other.ceiling):
            return ""
        return f"; by 1-core ceiling {conveyor.ceiling / other.ceiling:.2f}x"

    lines = [
        f"- vs FastAPI + Celery .delay(): {verdict(ratio('celery'), 2.0)}{cpu_ratio('celery')}",
        f"- vs the same, async def: {verdict(ratio('celery-async'), 2.0)}{cpu_ratio('celery-async')}",
        f"- vs bare FastAPI 202: {verdict(ratio('bare'), 0.5)}{cpu_ratio('bare')}",
        f"- vs the reference numbers in DESIGN.md: {conveyor.rate / 670:.2f}x Celery's ~670 req/s,"
        f" {conveyor.rate / 3800:.2f}x bare's ~3.8k req/s",
    ]
    open_ = by.get("conveyor-open")
    if open_ and open_.rate and open_.server_ms:
        rate, cpu = conveyor.rate / open_.rate, conveyor.server_ms - open_.server_ms
        lines.append(
            "- what access costs (with a key vs conveyor-open, no key check):"
            f" {rate:.2f}x the rate, {cpu:+.3f} ms of API CPU per request"
        )
    return lines


def parse(argv: list[str] | None = None) -> tuple[list[str], Options, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds of measured load (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up load (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--rejected", type=int, default=200, help="oversized bodies for the RSS check (0: skip)"
    )
    parser.add_argument("--rejected-mb", type=int, default=50, help="size of each oversized body, MB")
    parser.add_argument("--profile", action="store_true", help="run py-spy on each server (slows it down)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and vhosts")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if not (0 < args.duration <= 600 and 0 <= args.rejected <= 1000 and 0 < args.rejected_mb <= 1000):
        parser.error("--duration 1..600, --rejected 0..1000, --rejected-mb 1..1000")
    opts = Options(
        args.duration, args.warmup, args.connections, args.rejected, args.rejected_mb, args.keep, args.profile
    )
    return systems, opts, args.json


def main(argv: list[str] | None = None) -> list[AcceptResult]:
    systems, opts, json_path = parse(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (Debian's package)")
    return run_systems(
        "accept",
        "req/s",
        systems,
        lambda system: run(system, opts),
        lambda results: render(results, opts),
        json_path,
        "",
    )


if __name__ == "__main__":
    main()
