"""Timing: how soon things happen under a steady load — the latency goals of the performance budget.

    python bench/timing.py                          # 200 jobs/s for 30 s, retries and a schedule beside
    python bench/timing.py --duration 8 --rate 100  # a smoke run

One stack as it is deployed, on a scratch database (conveyor_bench) and vhost: `conveyor api`,
`conveyor relay`, `conveyor worker --processes 1 --threads 8`, and a key with the enqueue,
read and operate scopes. First the api and the relay alone take --accept-duration seconds
of echo POSTs at --rate (the accept path as deployed, as bench/accept.py runs it); then the
worker starts, and once those jobs are done, three things happen at once:

- echo jobs are posted at --rate for --duration seconds, open loop (job i is sent at
  start + i/rate whatever the answers before it did; at most 64 requests in flight): the
  client times each POST, and accept -> started is the job's `started_at` (the ledger's
  clock, the same host's) minus the moment the client sent the POST;
- `flaky` jobs that fail once (RETRY_BACKOFF_BASE=1) are posted at --retry-rate: a retry's
  lateness is its second attempt's `started_at` minus the `available_at` its failure set;
- a schedule fires every second: a tick's lateness is its job's `started_at` minus
  `scheduled_for`.

Goals (DESIGN.md, Performance budget): POST p99 <= 20 ms at 200 req/s (the first phase);
accept -> started
p99 <= 25 ms at 200 jobs/s; a retry starts within 100 ms of its due time; a schedule's job
within 100 ms of its tick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import drain
import httpx
import uvloop
from _harness import (
    CONVEYOR,
    ECHO_PAYLOAD,
    ECHO_TASK,
    CpuMeter,
    Proc,
    Procs,
    Query,
    create_database,
    drop_database,
    free_port,
    libpq_url,
    load_average,
    machine,
    make_key,
    migrate,
    pg_backends,
    processes,
    rabbitmq_server,
    scratch_vhost,
    source_version,
    table,
    wait_until,
    work_dir,
)
from _profile import API_MARKERS, RELAY_MARKERS, WORKER_MARKERS, Recorder, report

from app.cli.load import percentile

# The drain's scratch names (BENCH_SCRATCH): drain.conveyor_env points the stack at them.
DATABASE = drain.DATABASE
FLAKY_TASK = "app.tasks.example.flaky"
IN_FLIGHT = 64
SCHEDULE = "bench-every-second"
GOALS_MS = {
    "post p99": 20.0,
    "accept -> started p99": 25.0,
    "retry lateness max": 100.0,
    "tick lateness max": 100.0,
}


@dataclass
class Options:
    rate: float = 200.0
    duration: float = 30.0
    retry_rate: float = 5.0
    accept_duration: float = 15.0
    threads: int = 8
    keep: bool = False
    profile: bool = False


@dataclass
class TimingResult:
    rate: float  # echo jobs posted per second, as achieved
    posted: int
    errors: dict[str, int]
    accept_rate: float = 0.0  # the accept-only phase's achieved rate
    accept_post_ms: list[float] = field(default_factory=list)  # POST latency, api + relay, no worker
    post_ms: list[float] = field(default_factory=list)  # every accepted echo POST's latency, all running
    to_started_ms: list[float] = field(default_factory=list)  # client send -> started_at
    created_to_started_ms: list[float] = field(default_factory=list)  # created_at -> started_at
    retry_late_ms: list[float] = field(default_factory=list)
    tick_late_ms: list[float] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # component -> CPU ms per echo job
    profile: str = ""

    def p(self, values: Sequence[float], q: float) -> float:
        return percentile(values, q)

    def goals(self) -> dict[str, float]:
        """Each goal's measured value (ms), keyed as GOALS_MS."""
        return {
            "post p99": percentile(self.accept_post_ms, 99),
            "accept -> started p99": percentile(self.to_started_ms, 99),
            "retry lateness max": max(self.retry_late_ms, default=math.nan),
            "tick lateness max": max(self.tick_late_ms, default=math.nan),
        }


# -- the stack ---------------------------------------------------------------------------------


def start_stack(procs: Procs, env: dict[str, str], out: Path, port: int) -> list[Proc]:
    """The api and the relay, answering; the worker comes later (start_worker)."""
    relay = procs.start("relay", [CONVEYOR, "relay"], env, out)
    api = procs.start("api", [CONVEYOR, "api", "--host", "127.0.0.1", "--port", str(port)], env, out)
    wait_health(api, port, "live")
    return [api, relay]


def start_worker(procs: Procs, env: dict[str, str], out: Path, threads: int) -> Proc:
    argv = [CONVEYOR, "worker", "--processes", "1", "--threads", str(threads)]
    worker = procs.start("worker", argv, env, out)
    with Query(libpq_url(DATABASE)) as query:

        def beating() -> bool:
            worker.check_alive()
            row = query.one(
                "SELECT count(*) FROM workers WHERE stopped_at IS NULL AND last_seen > now() - interval '5 s'"
            )
            return int(row[0]) > 0

        wait_until(beating, 90, "the worker's first heartbeat")
    return worker


def wait_health(api: Proc, port: int, what: str) -> None:
    def answers() -> bool:
        api.check_alive()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/{what}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 90, f"/health/{what}")


def meters(stack: list[Proc]) -> list[CpuMeter]:
    """CPU of each part while the load runs: where a job's time goes when nothing batches."""
    api, relay, worker = stack
    return [
        CpuMeter("api", lambda: api.tree()),
        CpuMeter("relay", lambda: relay.tree()),
        CpuMeter("worker (both processes)", lambda: worker.tree()),
        CpuMeter("PostgreSQL backends", lambda: pg_backends(DATABASE)),
        CpuMeter("RabbitMQ*", rabbitmq_server),
    ]


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Posted:
    sent: dict[str, float] = field(default_factory=dict)  # job id -> wall clock when sent
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


class Connections:
    """Keep-alive HTTP/1.1 connections, one request at a time each, for a fixed POST.

    A load generator that shares two cores with what it measures must cost little: httpx
    spends about a millisecond of CPU per request, which at 200 req/s starves the API it
    times. This writes prepared bytes and reads a Content-Length response (uvicorn's JSON
    answers) off asyncio streams, a few tens of microseconds per request.
    """

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.made = 0
        self.size = size
        self.all: list[asyncio.StreamWriter] = []

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle.empty() and self.made < self.size:
            self.made += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.all.append(writer)
            return reader, writer
        return await self.idle.get()

    async def post(self, request: bytes) -> tuple[int, bytes]:
        reader, writer = await self.take()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self.made -= 1
            raise
        self.idle.put_nowait((reader, writer))
        return status, body

    async def close(self) -> None:
        for writer in self.all:
            writer.close()


def post_request(port: int, key: str, body: dict[str, Any]) -> bytes:
    content = json.dumps(body).encode()
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    return head.encode() + content


async def post_steadily(connections: Connections, request: bytes, rate: float, seconds: float) -> Posted:
    """Open loop: request i is sent at start + i/rate (once a connection is free), for `seconds`."""
    posted = Posted()

    async def one() -> None:
        sent, started = time.time(), time.perf_counter()
        try:
            status, body = await connections.post(request)
        except (OSError, asyncio.IncompleteReadError) as error:
            posted.error(type(error).__name__)
            return
        elapsed = (time.perf_counter() - started) * 1000
        if status != 202:
            posted.error(str(status))
            return
        job_id = str(json.loads(body)["id"])
        posted.sent[job_id] = sent
        posted.latency_ms[job_id] = elapsed

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    posted.seconds = loop.time() - start
    return posted


async def accept_only(port: int, key: str, opts: Options) -> Posted:
    """POSTs at the rate with no worker running: the accept path as a client sees it."""
    connections = Connections(port, IN_FLIGHT)
    echo = post_request(port, key, {"task": ECHO_TASK, "payload": ECHO_PAYLOAD})
    try:
        await post_steadily(connections, echo, 50, 2)  # warm the pools and the key cache
        return await post_steadily(connections, echo, opts.rate, opts.accept_duration)
    finally:
        await connections.close()


async def drive(port: int, key: str, opts: Options, cpu: list[CpuMeter]) -> tuple[Posted, Posted]:
    headers = {"authorization": f"Bearer {key}"}
    connections = Connections(port, IN_FLIGHT)
    echo = post_request(port, key, {"task": ECHO_TASK, "payload": ECHO_PAYLOAD})
    flaky = post_request(port, key, {"task": FLAKY_TASK, "payload": {"fail_times": 1}})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
        # Warm the API's pools and caches (a first request pays for connections and the key).
        await post_steadily(connections, echo, 50, 2)
        made = await client.post(
            "/api/v1/schedules",
            json={"name": SCHEDULE, "task": ECHO_TASK, "payload": {"message": "tick"}, "every_seconds": 1},
        )
        made.raise_for_status()
        for meter in cpu:
            meter.start()
        try:
            jobs, retries = await asyncio.gather(
                post_steadily(connections, echo, opts.rate, opts.duration),
                post_steadily(connections, flaky, opts.retry_rate, opts.duration),
            )
        finally:
            (await client.delete(f"/api/v1/schedules/{SCHEDULE}")).raise_for_status()
            await connections.close()
    return jobs, retries


# -- the ledger's account ----------------------------------------------------------------------


def wait_finished(ids: Sequence[str], timeout: float) -> None:
    with Query(libpq_url(DATABASE)) as query:

        def finished() -> bool:
            row = query.one(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND finished_at IS NOT NULL",
                (list(ids),),
            )
            return int(row[0]) == len(ids)

        wait_until(finished, timeout, f"{len(ids)} jobs to finish", interval=0.5)


def started_at(ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Job id -> (epoch of started_at, ms from created_at to started_at)."""
    with Query(libpq_url(DATABASE)) as query:
        rows = query.all(
            "SELECT id::text, extract(epoch FROM started_at),"
            " 1000 * extract(epoch FROM started_at - created_at)"
            " FROM jobs WHERE id = ANY(%s::uuid[]) AND started_at IS NOT NULL",
            (list(ids),),
        )
    return {row[0]: (float(row[1]), float(row[2])) for row in rows}


def retry_lateness(ids: Sequence[str]) -> list[float]:
    with Query(libpq_url(DATABASE)) as query:
        rows = query.all(
            "SELECT 1000 * extract(epoch FROM a.started_at - j.available_at)"
            " FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.run = j.run AND a.attempt = 2"
            " WHERE j.id = ANY(%s::uuid[]) AND j.attempts = 2",
            (list(ids),),
        )
    return [float(row[0]) for row in rows]


def tick_lateness() -> list[float]:
    with Query(libpq_url(DATABASE)) as query:
        rows = query.all(
            "SELECT 1000 * extract(epoch FROM started_at - scheduled_for) FROM jobs"
            " WHERE schedule = %s AND started_at IS NOT NULL ORDER BY scheduled_for",
            (SCHEDULE,),
        )
    # The first tick fires when the schedule is created (the relay picks it up on its next
    # wake-up): lateness counts from the second tick on.
    return [float(row[0]) for row in rows[1:]]


def measure(opts: Options) -> TimingResult:
    out = work_dir("timing")
    port = free_port()
    drop_database(DATABASE)
    create_database(DATABASE)
    try:
        with scratch_vhost(drain.SCRATCH, opts.keep) as broker, processes() as procs:
            env = drain.conveyor_env(broker, RETRY_BACKOFF_BASE="1", RETRY_BACKOFF_MAX="2")
            migrate(env, out)
            key = make_key(env, "enqueue,read,operate")
            api, relay = start_stack(procs, env, out, port)
            accepted = uvloop.run(accept_only(port, key, opts)) if opts.accept_duration > 0 else Posted()
            worker = start_worker(procs, env, out, opts.threads)
            wait_finished(list(accepted.sent), timeout=120)  # no backlog into the next phase
            stack = [api, relay, worker]
            load_before = load_average()
            cpu = meters(stack)
            recorders = []
            if opts.profile:  # py-spy on the api, the relay and the worker's busiest process
                targets = [("api", api.pid, API_MARKERS), ("relay", relay.pid, RELAY_MARKERS)]
                worker_child = max(worker.tree(), key=lambda p: p.pid).pid
                targets.append(("worker", worker_child, WORKER_MARKERS))
                recorders = [
                    (
                        name,
                        markers,
                        Recorder(pid, out / f"{name}-profile.txt", duration=int(opts.duration) + 5),
                    )
                    for name, pid, markers in targets
                ]
            jobs, retries = uvloop.run(drive(port, key, opts, cpu))
            load_after = load_average()
            profile = "".join(
                report(recorder.finish(markers), f"conveyor {name} at {opts.rate:g} jobs/s")
                for name, markers, recorder in recorders
            )
            cpu_ms = {m.label: m.elapsed() * 1000 / max(1, len(jobs.sent)) for m in cpu}
            wait_finished([*jobs.sent, *retries.sent], timeout=120)
            time.sleep(0.5)
            started = started_at(list(jobs.sent))
            result = TimingResult(
                rate=len(jobs.sent) / jobs.seconds if jobs.seconds else 0.0,
                posted=len(jobs.sent),
                errors={**jobs.errors, **{f"flaky {k}": v for k, v in retries.errors.items()}},
                accept_rate=len(accepted.sent) / accepted.seconds if accepted.seconds else 0.0,
                accept_post_ms=list(accepted.latency_ms.values()),
                post_ms=list(jobs.latency_ms.values()),
                to_started_ms=[
                    (started[i][0] - sent) * 1000 for i, sent in jobs.sent.items() if i in started
                ],
                created_to_started_ms=[started[i][1] for i in jobs.sent if i in started],
                retry_late_ms=retry_lateness(list(retries.sent)),
                tick_late_ms=tick_lateness(),
                load_before=load_before,
                load_after=load_after,
                cpu_ms_per_job=cpu_ms,
                profile=profile,
            )
            procs.stop_all()
            return result
    finally:
        if not opts.keep:
            drop_database(DATABASE)


# -- report ------------------------------------------------------------------------------------


def verdicts(result: TimingResult) -> list[tuple[str, float, float, bool]]:
    """(goal, measured ms, goal ms, met) for each latency goal."""
    return [
        (name, value, GOALS_MS[name], not math.isnan(value) and value <= GOALS_MS[name])
        for name, value in result.goals().items()
    ]


def render(result: TimingResult, opts: Options) -> str:
    def row(name: str, values: Sequence[float]) -> list[object]:
        return [
            name,
            len(values),
            *(f"{percentile(values, q):.1f}" for q in (50, 90, 99)),
            f"{max(values, default=math.nan):.1f}",
        ]

    headers = ["measure (ms)", "n", "p50", "p90", "p99", "max"]
    rows = [
        row("POST /api/v1/jobs, api + relay only (client)", result.accept_post_ms),
        row("POST /api/v1/jobs, worker draining too (client)", result.post_ms),
        row("accept -> started (client send -> started_at)", result.to_started_ms),
        row("created_at -> started_at (ledger only)", result.created_to_started_ms),
        row("retry: 2nd attempt started - due", result.retry_late_ms),
        row("schedule: job started - tick", result.tick_late_ms),
    ]
    lines = [
        f"## Timing: {opts.rate:g} echo jobs/s for {opts.duration:g} s, {opts.retry_rate:g} retries/s,"
        " a schedule every second",
        "",
        f"Machine: {machine()}. Source: {source_version()}. One api, one relay, one worker process"
        f" ({opts.threads} threads). Achieved {result.rate:,.1f} jobs/s; load {result.load_before}"
        f" -> {result.load_after}.",
        "",
        table(headers, rows),
        "",
    ]
    if result.errors:
        lines += [f"Not accepted: {result.errors}", ""]
    if result.cpu_ms_per_job:
        spent = ", ".join(f"{k} {v:.2f}" for k, v in result.cpu_ms_per_job.items())
        total = sum(result.cpu_ms_per_job.values())
        lines += [
            f"CPU per echo job while it ran (ms; retries and ticks included): {spent}; {total:.2f} in all,"
            f" {total * result.rate / 1000:.2f} of the machine's 2 cores at this rate."
            " *RabbitMQ's includes whatever else uses the server.",
            "",
        ]
    lines.append("Against the budget (DESIGN.md, Performance budget):")
    for name, value, goal, met in verdicts(result):
        lines.append(f"- {name}: {value:.1f} ms (goal <= {goal:g} ms): {'met' if met else 'NOT met'}")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="echo jobs posted per second (default 200)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument(
        "--retry-rate", type=float, default=5.0, help="failing-once jobs per second (default 5)"
    )
    parser.add_argument(
        "--accept-duration",
        type=float,
        default=15.0,
        help="seconds of POSTs before the worker starts (default 15)",
    )
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and vhost")
    parser.add_argument("--profile", action="store_true", help="py-spy on the api, relay and worker")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    args = parser.parse_args(argv)
    opts = Options(
        rate=args.rate,
        duration=args.duration,
        retry_rate=args.retry_rate,
        accept_duration=args.accept_duration,
        threads=args.threads,
        keep=args.keep,
        profile=args.profile,
    )
    return opts, args.json


def main(argv: list[str] | None = None) -> TimingResult:
    opts, json_path = parse(argv)
    result = measure(opts)
    print(render(result, opts))
    if result.profile:
        print(result.profile)
    if json_path:
        json_path.write_text(json.dumps(asdict(result), indent=2))
    return result


if __name__ == "__main__":
    main()
