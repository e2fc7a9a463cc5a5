"""Drain: how fast ONE worker process empties a queue of N pre-loaded jobs, Conveyor beside its peers.

    python bench/drain.py                      # 10,000 jobs; conveyor, dramatiq, celery
    python bench/drain.py --jobs 2000 --systems conveyor,dramatiq
    python bench/drain.py --systems conveyor --profile   # py-spy on the worker while it drains
    python bench/drain.py --systems conveyor-live,conveyor-flow --keys 100 --concurrency 2
    BENCH_SCRATCH=drain_mine python bench/drain.py   # scratch database and vhosts of that name

Each system gets the same work: N messages already in RabbitMQ (a vhost of its own), then
one worker process with 8 threads is started and timed from the first job it starts to
the last one it finishes.

- conveyor: N rows inserted into the ledger (database conveyor_bench), published by
  `conveyor relay`, which is then stopped; `conveyor worker --processes 1 --threads 8`
  runs `app.tasks.example.echo`: claim, run, succeed, all recorded in the ledger.
- conveyor-quiet: the same with LOG_LEVEL=WARNING (a diagnostic: the cost of per-job logs).
- conveyor-flow: N `tenant_report` jobs (0 s each) spread over --keys tenants, each tenant
  limited to --concurrency running at once; the relay runs beside the worker, since it
  publishes each tenant's next job only when a slot frees.
- conveyor-live: the same drain without limits (N echo jobs, the relay running beside the
  worker): what conveyor-flow is compared with.
- conveyor-redis: conveyor-live with BROKER_URL=redis://… (a db number of the bench's own on
  the shared Redis, 127.0.0.1:6379): Redis beside RabbitMQ, with
  `--systems conveyor-live,conveyor-redis`. Its broker CPU is redis-server's.
- conveyor-hooks: conveyor-live with one webhook subscription on every event type, POSTed
  to a receiver in this process that answers 200 (two deliveries per job: running,
  succeeded). Compare it with conveyor-live, interleaved:
  `--systems conveyor-live,conveyor-hooks,conveyor-live,conveyor-hooks`. Its extra rows: the
  relay's CPU per job, the deliveries received by the drain's end and within 30 s after it.
- dramatiq: a noop actor on a RabbitmqBroker with Dramatiq's default middleware,
  `dramatiq peers.dramatiq_noop --processes 1 --threads 8`.
- celery: a noop task over amqp, `celery worker -P threads -c 8`: one OS process with 8
  threads, like the others. celery-prefork (`-P prefork -c 1`) is there for reference:
  it is two processes (a consumer and a child that runs tasks), so it uses two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _harness import (
    CONVEYOR,
    ECHO_PAYLOAD,
    ECHO_TASK,
    MIB,
    VENV_BIN,
    CpuMeter,
    Proc,
    Procs,
    Query,
    Statements,
    WaitSampler,
    backend_clients,
    broker_server,
    busiest,
    child_env,
    create_database,
    database_url,
    drop_database,
    free_port,
    libpq_url,
    load_average,
    machine,
    migrate,
    pg_backends,
    pg_connect,
    pg_counters,
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
    wal_bytes,
    work_dir,
)
from _profile import RELAY_MARKERS, WORKER_MARKERS, Recorder, report

# Scratch names; BENCH_SCRATCH gives a run names of its own (two benches on one server never meet).
SCRATCH = os.environ.get("BENCH_SCRATCH", "conveyor_bench")
DATABASE = SCRATCH
CONVEYOR_QUEUE = "default"  # app.jobs.registry.Queue.DEFAULT, where echo runs
ECHO_MAX_ATTEMPTS = 5  # RETRY_MAX_ATTEMPTS' default; echo sets none of its own
SYSTEMS = (
    "conveyor",
    "conveyor-quiet",
    "conveyor-live",
    "conveyor-hooks",
    "conveyor-flow",
    "conveyor-redis",
    "dramatiq",
    "celery",
    "celery-prefork",
)
FLOW_TASK = "app.tasks.example.tenant_report"
DEFAULT_SYSTEMS = "conveyor,conveyor-quiet,dramatiq,celery,celery-prefork"
POLL_SECONDS = 0.1
# Writes told apart by their transaction's time (now() is one per transaction): the relay's
# takes that published (a held job published again counts its last take), the claims that
# started a job, the success batches. Counts that the machine's load does not change.
WRITES_SEEN = """
    SELECT count(DISTINCT published_at), count(DISTINCT started_at), count(DISTINCT finished_at) FROM jobs
"""
WRITES_NAMES = ("relay takes per job", "claims per job", "success batches per job")
# conveyor-hooks: how long after the drain its deliveries are still counted.
HOOKS_TAIL_SECONDS = 30.0


@dataclass
class Member:
    """One process of a worker command's tree, after the drain."""

    pid: int
    role: str  # what it runs, from its command line
    rss_mib: float
    pss_mib: float  # shared pages split among the processes sharing them
    uss_mib: float  # pages only this process holds


@dataclass
class DrainResult:
    system: str
    jobs: int
    seconds: float  # first job started → last job finished
    wall_seconds: float  # worker started → last job finished (boot included)
    worker_rss_mib: float  # the process that ran the jobs, after the drain
    worker_rss_first_mib: float  # the same, when its first job had run
    tree_rss_mib: float  # every process of the worker command
    tree: list[Member]  # the same, one by one
    worker_cpu_ms: float  # CPU per job of the worker command's processes
    db_cpu_ms: float | None  # CPU per job of the PostgreSQL backends serving the ledger
    broker_cpu_ms: float  # CPU per job of the broker's server (shared with anyone else using it)
    load_before: str
    load_after: str
    extra: dict[str, float] = field(default_factory=dict)
    pg_waits: dict[str, float] = field(default_factory=dict)
    statements: list[tuple[str, float, float, float, float, float]] = field(default_factory=list)
    profile: str = ""

    @property
    def tree_pss_mib(self) -> float:
        """The tree's proportional set size: pages shared by forked processes counted once."""
        return sum(m.pss_mib for m in self.tree) if self.tree else float("nan")

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_with_start_up(self) -> float:
        """Jobs/s from the worker's launch: boot, imports and connections included."""
        return self.jobs / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def ceiling(self) -> float:
        """Jobs/s if the worker had one core to itself: its GIL lets it use no more."""
        return 1000.0 / self.worker_cpu_ms if self.worker_cpu_ms > 0 else 0.0


@dataclass
class Options:
    jobs: int
    threads: int
    timeout: float
    keep: bool
    profile: bool
    processes: int = 1  # conveyor's worker processes (the peers always run one)
    keys: int = 100  # conveyor-flow: tenants the jobs are spread over
    concurrency: int = 2  # conveyor-flow: jobs running at once per tenant


# -- shared steps ------------------------------------------------------------------------------


@contextmanager
def scratch_database(name: str, keep: bool) -> Iterator[str]:
    create_database(name)
    try:
        yield name
    finally:
        if not keep:
            drop_database(name)


@dataclass
class Window:
    """Readings taken when the first job has run, so that the worker's boot is not counted."""

    done_at_start: int
    worker: CpuMeter
    db: CpuMeter | None
    broker: CpuMeter
    recorder: Recorder | None
    sampler: WaitSampler | None
    rss_at_start: float


def open_window(
    worker: Proc,
    done: int,
    db_lookup: Callable[[], list[psutil.Process]] | None,
    opts: Options,
    out: Path,
    broker: str = "amqp://",
) -> Window:
    meters = [CpuMeter("worker", worker.tree), CpuMeter("broker", broker_server(broker))]
    db = CpuMeter("db", db_lookup) if db_lookup else None
    for meter in [*meters, *([db] if db else [])]:
        meter.start()
    recorder = None
    if opts.profile:
        target = working_process(worker)
        recorder = Recorder(target.pid, out / "worker-profile.txt", duration=int(opts.timeout))
    sampler = WaitSampler(DATABASE).start() if db_lookup else None
    rss = rss_mib(working_process(worker))
    return Window(done, meters[0], db, meters[1], recorder, sampler, rss)


def close_window(window: Window, result_jobs: int) -> tuple[float, float | None, float]:
    counted = max(1, result_jobs - window.done_at_start)
    worker = 1000 * window.worker.elapsed() / counted
    db = 1000 * window.db.elapsed() / counted if window.db else None
    broker = 1000 * window.broker.elapsed() / counted
    return worker, db, broker


def pg_cpu_by_client(
    window: Window, poll: Query, worker: Proc, relay: Proc | None, counted: int
) -> dict[str, float]:
    """PostgreSQL's CPU per job split by the process its backend serves: the worker (claims,
    successes) and the relay (takes); what neither holds (the bench's own sampler) is 'other'."""
    if window.db is None:
        return {}
    clients = {"worker": worker.tree(), **({"relay": relay.tree()} if relay else {})}
    owners = backend_clients(poll, DATABASE, clients)
    split: dict[str, float] = {}
    for pid, seconds in window.db.elapsed_by_pid().items():
        key = f"PG CPU ms/job serving the {owners.get(pid, 'other')}"
        split[key] = split.get(key, 0.0) + 1000 * seconds / max(1, counted)
    return split


def working_process(worker: Proc) -> psutil.Process:
    """The process that runs the jobs: Dramatiq's CLI forks it; Celery's may run them itself."""
    tree = worker.tree()
    return busiest(tree[1:] if len(tree) > 1 and "celery" not in worker.argv[0] else tree)


def worker_memory(worker: Proc) -> tuple[float, float, list[Member]]:
    """The working process's RSS, the tree's RSS sum, and each process of the tree."""
    tree = worker.tree()
    if not tree:
        return float("nan"), float("nan"), []
    working = working_process(worker)
    return rss_mib(working), sum(rss_mib(p) for p in tree), [member(p, p == working) for p in tree]


def member(proc: psutil.Process, working: bool) -> Member:
    nan = float("nan")
    try:
        info = proc.memory_full_info()
        args = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return Member(proc.pid, "gone", nan, nan, nan)
    role = "jobs" if working else " ".join(Path(a).name for a in args[:3])
    pss = float(getattr(info, "pss", nan))
    return Member(proc.pid, role, info.rss / MIB, pss / MIB, info.uss / MIB)


def finish_profile(window: Window, title: str) -> str:
    """Read the profile; py-spy writes it when the worker (stopped by now) exits."""
    if window.recorder is None:
        return ""
    return report(window.recorder.finish(WORKER_MARKERS), title)


# -- conveyor ----------------------------------------------------------------------------------


def conveyor_env(broker: str, **extra: str) -> dict[str, str]:
    return child_env(
        DATABASE_URL=database_url(DATABASE),
        BROKER_URL=broker,
        WORKER_METRICS_PORT=str(free_port()),
        LOG_FORMAT="json",
        **extra,
    )


def preload_flow(n: int, keys: int, concurrency: int) -> None:
    """N tenant_report jobs over `keys` tenants, with the columns `new_job` gives them."""
    with pg_connect(libpq_url(DATABASE)) as conn:
        conn.execute(
            """
            INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts, available_at,
                              concurrency_key, concurrency_limit)
            SELECT gen_random_uuid(), %s, %s, jsonb_build_object('tenant', 't' || (i %% %s), 'seconds', 0),
                   'queued', 0, %s, now(), 't' || (i %% %s), %s
            FROM generate_series(1, %s) AS i
            """,
            (FLOW_TASK, CONVEYOR_QUEUE, keys, ECHO_MAX_ATTEMPTS, keys, concurrency, n),
        )


def preload_ledger(n: int) -> None:
    with pg_connect(libpq_url(DATABASE)) as conn:
        conn.execute(
            """
            INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts, available_at)
            SELECT gen_random_uuid(), %s, %s, %s::jsonb, 'queued', 0, %s, now()
            FROM generate_series(1, %s)
            """,
            (ECHO_TASK, CONVEYOR_QUEUE, json.dumps(ECHO_PAYLOAD), ECHO_MAX_ATTEMPTS, n),
        )


def relay_publish(procs: Procs, env: dict[str, str], n: int, out: Path, opts: Options) -> tuple[float, str]:
    """Run `conveyor relay` until every row is published; its publish rate (jobs/s) and profile."""
    timeout = opts.timeout
    relay = procs.start("relay", [CONVEYOR, "relay"], env, out)
    recorder: Recorder | None = None
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout
    with Query(libpq_url(DATABASE)) as query:
        while time.monotonic() < deadline:
            relay.check_alive()
            left = int(query.one("SELECT count(*) FROM jobs WHERE published_at IS NULL")[0])
            if first is None and left < n:
                first = (time.monotonic(), left)
                if opts.profile:
                    recorder = Recorder(relay.pid, out / "relay-profile.txt", duration=int(timeout))
            if left == 0:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"relay did not publish {n} jobs in {timeout:.0f}s")
    done = time.monotonic()
    relay.stop()
    profile = (
        report(recorder.finish(RELAY_MARKERS), f"conveyor relay publishing {n} jobs") if recorder else ""
    )
    if first is None or done <= first[0]:
        return float("nan"), profile
    return first[1] / (done - first[0]), profile


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 200 and counts what it got."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.count = 0
        self.last_at = 0.0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    receiver.count += 1
                    receiver.last_at = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops connections of a sender with 16 in flight

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def subscribe_everything(url: str) -> None:
    """One subscription on every event type (as `POST /api/v1/webhooks` makes it)."""
    events = ["job.queued", "job.running", "job.retrying", "job.succeeded", "job.dead", "job.cancelled"]
    with pg_connect(libpq_url(DATABASE)) as conn:
        conn.execute(
            "INSERT INTO webhooks (id, url, events, secret, created_by, created_at)"
            " VALUES (gen_random_uuid(), %s, %s, 'whsec_bench', 'bench', now() - interval '1 minute')",
            (url, events),
        )


def run_conveyor(opts: Options, system: str = "conveyor") -> DrainResult:
    """One drain of Conveyor; conveyor-live and conveyor-flow keep the relay running meanwhile."""
    out = work_dir(f"drain-{system}")
    extra = {"LOG_LEVEL": "WARNING"} if system == "conveyor-quiet" else {}
    vhost = SCRATCH
    on_redis = system == "conveyor-redis"
    with (
        scratch_redis(opts.keep) if on_redis else scratch_vhost(vhost, opts.keep) as broker,
        scratch_database(DATABASE, opts.keep),
        processes() as procs,
    ):
        env = conveyor_env(broker, **extra)
        migrate(env, out)
        live = system in {"conveyor-live", "conveyor-flow", "conveyor-hooks", "conveyor-redis"}
        if system == "conveyor-flow":
            preload_flow(opts.jobs, opts.keys, opts.concurrency)
        else:
            preload_ledger(opts.jobs)
        receiver = Receiver() if system == "conveyor-hooks" else None
        if receiver is not None:
            subscribe_everything(receiver.url)
        relay_meter: CpuMeter | None = None
        if live:
            # The relay publishes while the worker drains: for conveyor-flow, as slots free.
            relay_rate, relay_profile, depth = float("nan"), "", opts.jobs
            relay: Proc | None = procs.start("relay", [CONVEYOR, "relay"], env, out)
            relay_meter = CpuMeter("relay", relay.tree)
        else:
            relay = None
            relay_rate, relay_profile = relay_publish(procs, env, opts.jobs, out, opts)
            depth = queue_depth(broker, CONVEYOR_QUEUE)
        if depth < opts.jobs:
            raise RuntimeError(f"expected {opts.jobs} messages in {CONVEYOR_QUEUE}, found {depth}")
        # More is possible and correct: a relay whose transaction broke after publishing
        # publishes that batch again (at least once); the worker's claim skips the copies.

        with Query(libpq_url(DATABASE)) as poll:

            def db_lookup() -> list[psutil.Process]:
                return [p for p in pg_backends(DATABASE) if p.pid != poll.backend_pid]

            load_before = load_average()
            counters = pg_counters(DATABASE)
            statements = Statements(DATABASE).reset()
            wal_before = wal_bytes()
            argv = [CONVEYOR, "worker", "--processes", str(opts.processes), "--threads", str(opts.threads)]
            started = time.monotonic()
            worker = procs.start("worker", argv, env, out)
            window: Window | None = None
            polls = 0
            deadline = started + opts.timeout
            while True:
                worker.check_alive()
                polls += 1
                row = poll.one(
                    "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
                    " count(*) FILTER (WHERE state IN ('dead', 'cancelled', 'retrying')) FROM jobs"
                )
                done, failed = int(row[0]), int(row[1])
                if failed:
                    raise RuntimeError(f"{failed} jobs did not succeed; see {worker.log_path}")
                if window is None and done > 0:
                    window = open_window(worker, done, db_lookup, opts, out, broker)
                    if relay_meter is not None:
                        relay_meter.start()
                if done >= opts.jobs:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{done}/{opts.jobs} jobs done after {opts.timeout:.0f}s")
                time.sleep(POLL_SECONDS)
            wall = time.monotonic() - started
            assert window is not None
            worker_ms, db_ms, broker_ms = close_window(window, opts.jobs)
            relay_ms = (
                1000 * relay_meter.elapsed() / max(1, opts.jobs - window.done_at_start)
                if relay_meter
                else None
            )
            db_by_client = pg_cpu_by_client(window, poll, worker, relay, opts.jobs - window.done_at_start)
            pg_waits = window.sampler.stop() if window.sampler else {}
            rss, tree_rss, tree = worker_memory(worker)
            load_after = load_average()
            span = poll.one("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs")
            seconds = float(span[0])
            writes = poll.one(WRITES_SEEN)
            wal = wal_bytes() - wal_before
        hooks: dict[str, float] = {}
        if receiver is not None:
            # Deliveries go on after the drain: counted for at most HOOKS_TAIL_SECONDS more.
            at_drain_end = receiver.count
            expected = 2 * opts.jobs  # running and succeeded; the preloaded rows had no queued event
            tail_end = time.monotonic() + HOOKS_TAIL_SECONDS
            while receiver.count < expected and time.monotonic() < tail_end:
                time.sleep(POLL_SECONDS)
            hooks = {
                "webhook deliveries received by the drain's end": at_drain_end,
                "webhook deliveries/s (drain and tail)": receiver.count / (time.monotonic() - started),
                "webhook deliveries left after the tail": expected - receiver.count,
            }
            receiver.close()
        if relay_ms is not None:
            hooks["relay CPU ms per job (drain window)"] = relay_ms
        # Backends flush their statistics when they exit: stop the worker before reading them.
        worker.stop()
        after = pg_counters(DATABASE)
        profile = finish_profile(window, f"{system} worker, {opts.jobs} echo jobs")
        polls += 3  # the three queries above, on the same database
        ledger = {
            "transactions per job": (after["xact_commit"] + after["xact_rollback"] - polls)
            - (counters["xact_commit"] + counters["xact_rollback"]),
            "rows inserted per job": after["tup_inserted"] - counters["tup_inserted"],
            "rows updated per job": after["tup_updated"] - counters["tup_updated"],
        }
        ledger.update(zip(WRITES_NAMES, (float(v) for v in writes), strict=True))
        per_job = {k: v / opts.jobs for k, v in ledger.items()}
        per_job["WAL bytes per job"] = wal / opts.jobs  # the whole server's WAL: a quiet machine's
        return DrainResult(
            system=system,
            jobs=opts.jobs,
            seconds=seconds,
            wall_seconds=wall,
            worker_rss_mib=rss,
            worker_rss_first_mib=window.rss_at_start,
            tree_rss_mib=tree_rss,
            tree=tree,
            worker_cpu_ms=worker_ms,
            db_cpu_ms=db_ms,
            broker_cpu_ms=broker_ms,
            load_before=load_before,
            load_after=load_after,
            extra={
                "relay publish jobs/s": relay_rate,
                "duplicate messages": depth - opts.jobs,
                "commits/s": ledger["transactions per job"] / seconds,
                **per_job,
                **hooks,
                **db_by_client,
            },
            pg_waits=pg_waits,
            profile=profile + relay_profile,
            statements=statements.read(opts.jobs),
        )


# -- peers -------------------------------------------------------------------------------------


def peer_worker_argv(system: str, threads: int) -> list[str]:
    if system == "dramatiq":
        return [
            str(VENV_BIN / "dramatiq"),
            "peers.dramatiq_noop",
            "--processes",
            "1",
            "--threads",
            str(threads),
        ]
    celery = [str(VENV_BIN / "celery"), "-A", "peers.celery_noop", "worker", "-l", "warning", "-Q", "celery"]
    # No gossip, mingle or heartbeat: cluster chatter that a one-worker benchmark does not need.
    celery += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if system == "celery-prefork":
        return [*celery, "-P", "prefork", "-c", "1"]
    return [*celery, "-P", "threads", "-c", str(threads)]


def read_marks(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    marks = {}
    for line in path.read_text().splitlines():
        n, _, at = line.partition(" ")
        if n.isdigit() and at:
            marks[int(n)] = float(at)
    return marks


def run_peer(opts: Options, system: str) -> DrainResult:
    out = work_dir(f"drain-{system}")
    kind = "dramatiq" if system == "dramatiq" else "celery"
    queue = "default" if kind == "dramatiq" else "celery"
    with scratch_vhost(f"{SCRATCH}_{kind}", opts.keep) as broker, processes() as procs:
        marks_path = out / "marks.txt"
        env = child_env(BENCH_BROKER_URL=broker, BENCH_N=str(opts.jobs), BENCH_MARK_FILE=str(marks_path))
        preload = [sys.executable, "-m", "peers.preload", kind, str(opts.jobs)]
        done = subprocess.run(preload, env=env, cwd=out, capture_output=True, text=True, timeout=opts.timeout)
        if done.returncode:
            raise RuntimeError(f"pre-loading {kind} failed:\n{done.stderr[-3000:]}")
        depth = queue_depth(broker, queue)
        if depth != opts.jobs:
            raise RuntimeError(f"expected {opts.jobs} messages in {queue}, found {depth}")
        load_before = load_average()
        started = time.monotonic()
        worker = procs.start("worker", peer_worker_argv(system, opts.threads), env, out)
        window: Window | None = None
        deadline = started + opts.timeout
        while True:
            worker.check_alive()
            marks = read_marks(marks_path)
            if window is None and 1 in marks:
                window = open_window(worker, 1, None, opts, out)
            if opts.jobs in marks:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{system}: not drained after {opts.timeout:.0f}s")
            time.sleep(POLL_SECONDS / 5)
        wall = time.monotonic() - started
        assert window is not None
        worker_ms, _, broker_ms = close_window(window, opts.jobs)
        wait_until(lambda: queue_depth(broker, queue) == 0, 30, f"{queue} to be empty")
        rss, tree_rss, tree = worker_memory(worker)
        load_after = load_average()
        worker.stop()
        profile = finish_profile(window, f"{system} worker, {opts.jobs} noop tasks")
        return DrainResult(
            system=system,
            jobs=opts.jobs,
            seconds=marks[opts.jobs] - marks[1],
            wall_seconds=wall,
            worker_rss_mib=rss,
            worker_rss_first_mib=window.rss_at_start,
            tree_rss_mib=tree_rss,
            tree=tree,
            worker_cpu_ms=worker_ms,
            db_cpu_ms=None,
            broker_cpu_ms=broker_ms,
            load_before=load_before,
            load_after=load_after,
            profile=profile,
        )


def run(system: str, opts: Options) -> DrainResult:
    if system.startswith("conveyor"):
        return run_conveyor(opts, system)
    return run_peer(opts, system)


# -- report ------------------------------------------------------------------------------------


def render(results: list[DrainResult], opts: Options) -> str:
    by = {r.system: r for r in results}
    headers = [
        "system",
        "jobs",
        "drain s",
        "jobs/s",
        "jobs/s from launch",
        "worker CPU ms/job",
        "1-core ceiling jobs/s",
        "PG CPU ms/job",
        "broker CPU ms/job*",
        "worker RSS MiB: 1st job -> end",
        "worker tree RSS MiB",
        "worker tree PSS MiB",
        "load before -> after",
    ]
    rows = [
        [
            r.system,
            r.jobs,
            r.seconds,
            r.rate,
            r.rate_with_start_up,
            r.worker_cpu_ms,
            r.ceiling,
            r.db_cpu_ms,
            r.broker_cpu_ms,
            f"{r.worker_rss_first_mib:.1f} -> {r.worker_rss_mib:.1f}",
            r.tree_rss_mib,
            r.tree_pss_mib,
            f"{r.load_before} -> {r.load_after}",
        ]
        for r in results
    ]
    lines = [
        f"## Drain: {_workers(opts)}, {opts.jobs:,} jobs, {opts.threads} threads",
        "",
        f"Machine: {machine()}. Source: {source_version()}.",
        "",
        table(headers, rows),
        "",
        "*The broker's CPU (RabbitMQ's; redis-server's for conveyor-redis) includes whatever else uses",
        "the same server meanwhile.",
        "The 1-core ceiling is 1000 / worker CPU ms per job: the rate the worker reaches when it has",
        "a core to itself (one Python process cannot use more). It is much less sensitive to",
        "the machine's load than jobs/s, so compare ceilings when the load average is high.",
        "Jobs/s from launch counts from the worker's start (imports, connections, first delivery)",
        "to its last job: the rate the issue's first table used.",
        "The worker tree is the worker command's process and every process under it (Dramatiq's",
        "parent, its worker processes, the metrics exporter), after the drain; not the relay.",
        "PSS counts a page shared by forked processes once, split among them; RSS once in each.",
    ]
    for r in results:
        procs = "; ".join(
            f"{m.role} (pid {m.pid}) RSS {m.rss_mib:.1f} PSS {m.pss_mib:.1f} USS {m.uss_mib:.1f}"
            for m in r.tree
        )
        lines += ["", f"{r.system}'s worker tree, MiB: {procs}."]
    conveyor = by.get("conveyor")
    if conveyor:
        extra = ", ".join(f"{v:.2f} {k}" for k, v in conveyor.extra.items() if "per job" in k)
        relay = conveyor.extra.get("relay publish jobs/s", float("nan"))
        dupes = conveyor.extra.get("duplicate messages", 0)
        lines += [
            "",
            f"Conveyor's relay published at {relay:,.0f} jobs/s (before the worker started)"
            + (f", {dupes:,.0f} of them twice (its transaction broke)." if dupes else "."),
            f"Ledger activity (pg_stat_database, worker boot and shutdown included): {extra}.",
            "",
            "Against the budget (DESIGN.md, Performance budget), measured side by side:",
        ]
        lines += _ratios(conveyor, by)
    flow, live = by.get("conveyor-flow"), by.get("conveyor-live")
    if flow and live and live.rate:
        lines += [
            "",
            f"Flow control ({opts.keys} tenants, {opts.concurrency} at once each) vs the same drain"
            f" without limits: {verdict(flow.rate / live.rate, 0.8)}",
        ]
    redis, live = by.get("conveyor-redis"), by.get("conveyor-live")
    if redis and live and live.rate and live.ceiling:
        lines += [
            "",
            f"Redis as the broker vs RabbitMQ (conveyor-redis / conveyor-live): {redis.rate / live.rate:.2f}x"
            f" jobs/s; by 1-core ceiling {redis.ceiling / live.ceiling:.2f}x",
        ]
    for r in results:
        split = ", ".join(f"{k.rsplit(' ', 1)[1]} {v:.2f}" for k, v in r.extra.items() if "serving" in k)
        if split:
            lines += ["", f"PostgreSQL CPU ms/job while {r.system} drained, by the client served: {split}"]
    for r in results:
        if r.system.startswith("conveyor") and r.system != "conveyor":
            extra = ", ".join(
                f"{v:.3f} {k}" for k, v in r.extra.items() if "per job" in k and "PG CPU" not in k
            )
            lines += ["", f"Ledger activity while {r.system} drained (the relay's too): {extra}."]
    for r in results:
        if r.statements:
            head = f"Statements per job while {r.system} drained (pg_stat_statements"
            lines += ["", head + "; calls, rows, buffers, execution ms, planning ms):"]
            lines += [
                f"- {c:.3f} {n:.2f} {b:.1f} {ms:.3f} {p:.3f} `{q}`" for q, c, n, b, ms, p in r.statements
            ]
    for r in results:
        if r.pg_waits:
            lines += [
                "",
                f"PostgreSQL backends of the ledger while {r.system} drained (pg_stat_activity, 50/s):",
            ]
            lines += [f"- {k}: {v:.2f}" for k, v in r.pg_waits.items() if v >= 0.005]
    return "\n".join(lines) + "\n"


def _workers(opts: Options) -> str:
    if opts.processes == 1:
        return "one worker process"
    return f"{opts.processes} Conveyor worker processes (the peers: one)"


def _ratios(conveyor: DrainResult, by: dict[str, DrainResult]) -> list[str]:
    def ratio(peer: str) -> float | None:
        other = by.get(peer)
        return conveyor.rate / other.rate if other and other.rate else None

    def cpu_ratio(peer: str) -> str:
        other = by.get(peer)
        if not (other and other.ceiling):
            return ""
        return f"; by 1-core ceiling {conveyor.ceiling / other.ceiling:.2f}x"

    lines = [
        f"- vs Celery noop (threads, one process): {verdict(ratio('celery'), 1.0)}{cpu_ratio('celery')}",
        f"- vs Celery noop (prefork -c 1, two processes): {verdict(ratio('celery-prefork'), 1.0)}",
        f"- vs raw Dramatiq: {verdict(ratio('dramatiq'), 1.0)}{cpu_ratio('dramatiq')}",
    ]
    rss = conveyor.tree_rss_mib
    met = "met" if rss < 100 else "NOT met"
    line = f"- worker tree RSS after draining: {rss:.1f} MiB (budget < 100 MiB: {met}"
    if "dramatiq" in by:
        line += f"; raw Dramatiq's tree here: {by['dramatiq'].tree_rss_mib:.1f} MiB"
    lines.append(line + ")")
    return lines


def parse(argv: list[str] | None = None) -> tuple[list[str], Options, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to drain (default 10000)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument(
        "--processes", type=int, default=1, help="conveyor's worker processes (default 1; peers run one)"
    )
    parser.add_argument(
        "--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per step (default 300)")
    parser.add_argument("--profile", action="store_true", help="run py-spy on each worker (slows it down)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and vhosts")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keys", type=int, default=100, help="conveyor-flow: tenants (default 100)")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="conveyor-flow: running at once per tenant (default 2)"
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    opts = Options(
        args.jobs,
        args.threads,
        args.timeout,
        args.keep,
        args.profile,
        args.processes,
        args.keys,
        args.concurrency,
    )
    return systems, opts, args.json


def main(argv: list[str] | None = None) -> list[DrainResult]:
    systems, opts, json_path = parse(argv)
    return run_systems(
        "drain",
        "jobs/s",
        systems,
        lambda system: run(system, opts),
        lambda results: render(results, opts),
        json_path,
        f"{opts.jobs} jobs, ",
    )


if __name__ == "__main__":
    main()
