"""Events: how soon a job's change reaches a follower of GET /api/v1/events, under a steady load.

    python bench/events.py                          # 200 jobs/s for 30 s
    python bench/events.py --duration 8 --rate 100  # a smoke run

One stack as it is deployed, on a scratch database and vhost of its own (conveyor_bench_events):
`conveyor api`, `conveyor relay`, `conveyor worker --processes 1 --threads 8`, a key with the
enqueue and read scopes. One SSE consumer follows every event from the start; echo jobs are
posted at --rate for --duration seconds, open loop (job i is sent at start + i/rate, at most 64
in flight), each making three events (queued, running, succeeded). An event's latency is the
moment the consumer read it minus its `at` in the ledger (the clock of the insert in the
transaction that made the change; the same host's clock), so it includes the rest of that
transaction, its commit, the wake, the pump's read (the events with their jobs' rows, one
statement) and the HTTP write.

Goal (DESIGN.md, Performance budget): an event on /api/v1/events within 50 ms (p99) of the
state change that made it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from _harness import (
    CONVEYOR,
    ECHO_PAYLOAD,
    ECHO_TASK,
    Proc,
    Procs,
    Query,
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
    processes,
    scratch_vhost,
    source_version,
    table,
    wait_until,
    work_dir,
)
from timing import Connections, Posted, post_request, post_steadily

DATABASE = "conveyor_bench_events"
GOAL_P99_MS = 50.0


@dataclass
class Options:
    rate: float = 200.0
    duration: float = 30.0
    threads: int = 8
    keep: bool = False


@dataclass
class EventsResult:
    rate: float
    posted: int
    events: int
    missing: int
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""

    @staticmethod
    def p(values: Sequence[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


class Consumer(threading.Thread):
    """Reads the stream and notes when each event arrived (time.time(), the ledger's host clock)."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True, name="sse-consumer")
        self.url, self.key = url, key
        self.arrived: dict[str, tuple[str, float]] = {}
        self.connected = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        timeout = httpx.Timeout(10.0, read=60.0)
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", f"{self.url}/api/v1/events", headers=headers) as response,
        ):
            self.connected.set()
            cursor, state = "", ""
            for line in response.iter_lines():
                if line.startswith("id: "):
                    cursor = line[4:]
                elif line.startswith("event: "):
                    state = line[7:]
                elif line == "" and cursor:
                    self.arrived[cursor] = (state, time.time())
                    cursor = ""
                if self.stop.is_set():
                    return


async def post_load(port: int, key: str, rate: float, seconds: float) -> Posted:
    """Echo POSTs at the rate, open loop, through bench/timing.py's lean HTTP connections."""
    connections = Connections(port, 64)
    try:
        return await post_steadily(
            connections, post_request(port, key, {"task": ECHO_TASK, "payload": ECHO_PAYLOAD}), rate, seconds
        )
    finally:
        await connections.close()


def start(procs: Procs, env: dict[str, str], out: Path, port: int, threads: int) -> list[Proc]:
    api = procs.start("api", [CONVEYOR, "api", "--host", "127.0.0.1", "--port", str(port)], env, out)
    relay = procs.start("relay", [CONVEYOR, "relay"], env, out)
    argv = [CONVEYOR, "worker", "--processes", "1", "--threads", str(threads)]
    worker = procs.start("worker", argv, env, out)

    def ready() -> bool:
        api.check_alive()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 120, "/health/ready")
    return [api, relay, worker]


def measure(opts: Options) -> EventsResult:
    out = work_dir("events")
    port = free_port()
    drop_database(DATABASE)
    create_database(DATABASE)
    try:
        with scratch_vhost(DATABASE, opts.keep) as broker, processes() as procs:
            env = child_env(
                DATABASE_URL=database_url(DATABASE),
                BROKER_URL=broker,
                WORKER_METRICS_PORT=str(free_port()),
                LOG_FORMAT="json",
            )
            migrate(env, out)
            key = make_key(env, "enqueue,read")
            start(procs, env, out, port, opts.threads)
            consumer = Consumer(f"http://127.0.0.1:{port}", key)
            consumer.start()
            consumer.connected.wait(30)
            time.sleep(1.0)
            load_before = load_average()
            began = time.monotonic()
            posted = asyncio.run(post_load(port, key, opts.rate, opts.duration))
            ids, seconds = list(posted.sent), time.monotonic() - began
            if posted.errors:
                print(f"refused or failed: {posted.errors}", flush=True)
            with Query(libpq_url(DATABASE)) as query:

                def all_told() -> bool:
                    return len(consumer.arrived) >= 3 * len(ids)

                wait_until(all_told, 120, "every event told")
                rows = query.all("SELECT xid::text || '-' || id, extract(epoch FROM at) FROM job_events")
            load_after = load_average()
            consumer.stop.set()
            written = {cursor: float(at) for cursor, at in rows}
            latency: dict[str, list[float]] = {"all": []}
            for cursor, (state, arrived) in consumer.arrived.items():
                if cursor in written:
                    ms = (arrived - written[cursor]) * 1000
                    latency["all"].append(ms)
                    latency.setdefault(state, []).append(ms)
            result = EventsResult(
                rate=len(ids) / seconds,
                posted=len(ids),
                events=len(consumer.arrived),
                missing=len(set(written) - set(consumer.arrived)),
                latency_ms=latency,
                load_before=load_before,
                load_after=load_after,
            )
            procs.stop_all()
            return result
    finally:
        if not opts.keep:
            drop_database(DATABASE)


def render(result: EventsResult, opts: Options) -> str:
    rows = [
        [
            name,
            len(values),
            f"{EventsResult.p(values, 0.5):.1f}",
            f"{EventsResult.p(values, 0.9):.1f}",
            f"{EventsResult.p(values, 0.99):.1f}",
            f"{max(values, default=math.nan):.1f}",
        ]
        for name, values in sorted(result.latency_ms.items())
    ]
    p99 = EventsResult.p(result.latency_ms.get("all", []), 0.99)
    return "\n".join(
        [
            f"events: {machine()}; {source_version()}",
            f"{result.posted} echo jobs at {result.rate:.0f}/s (asked {opts.rate:g}/s for "
            f"{opts.duration:g} s); {result.events} events told, {result.missing} written but not told",
            f"load average before {result.load_before}, after {result.load_after}",
            "",
            table(["event", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows),
            "",
            f"event told within {p99:.1f} ms (p99; target <= {GOAL_P99_MS:g} ms: "
            f"{'met' if p99 <= GOAL_P99_MS else 'NOT met'})",
        ]
    )


def main(argv: list[str] | None = None) -> EventsResult:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="echo jobs posted per second (default 200)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and vhost")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    opts = Options(args.rate, args.duration, args.threads, args.keep)
    result = measure(opts)
    print(render(result, opts))
    if args.json:
        args.json.write_text(json.dumps(asdict(result)))
    return result


if __name__ == "__main__":
    main()
