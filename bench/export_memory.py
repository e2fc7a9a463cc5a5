"""Export memory: the peak RSS of the worker that exports 200,000 jobs, and of the API sending the file.

    .venv/bin/python bench/export_memory.py                        # this checkout, 200,000 jobs
    .venv/bin/python bench/export_memory.py --rows 50000
    .venv/bin/python bench/export_memory.py --source /path/to/other/checkout/src   # another version

A scratch database (conveyor_bench_export) is migrated and seeded with `--rows` finished jobs
in one INSERT ... SELECT generate_series, and a scratch vhost is made. Then `conveyor api`,
`conveyor relay` and `conveyor worker` (one process, one thread) start as children, a key
with `enqueue,read` (an export of every job) asks for `app.tasks.example.export_jobs`, and the
file is downloaded through the API in 64 KiB reads that are thrown away.

Printed: the RSS of the worker's job process before the export and its peak during it, the
API's RSS before the download and its peak during it (sampled every 20 ms), the file's size,
and how long each took. `--source DIR` runs the children from another checkout's `src` (put
first on PYTHONPATH), e.g. a worktree of an older commit, to compare. Numbers only; nothing is
asserted. The database and vhost are dropped afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import httpx  # noqa: E402
import psutil  # noqa: E402
from _harness import (  # noqa: E402
    CONVEYOR,
    MIB,
    child_env,
    create_database,
    database_url,
    drop_database,
    free_port,
    libpq_url,
    machine,
    make_key,
    pg_connect,
    processes,
    scratch_vhost,
    source_version,
    table,
    wait_until,
    work_dir,
)

DATABASE = "conveyor_bench_export"
VHOST = "conveyor_bench_export"
EXPORT = "app.tasks.example.export_jobs"
SEED = """
INSERT INTO jobs (id, task, queue, payload, state, attempts, max_attempts, created_at, updated_at,
                  available_at, published_at, started_at, finished_at, result, progress, client_id,
                  last_error)
SELECT gen_random_uuid(), 'app.tasks.example.echo', 'default', '{"message": "bench"}',
       CASE WHEN g %% 10 = 0 THEN 'dead' ELSE 'succeeded' END, 1, 5,
       now() - make_interval(secs => g), now(), now(), now(), now(), now(), '{"message": "bench"}', 100,
       CASE WHEN g %% 2 = 0 THEN 'bench-client' END,
       CASE WHEN g %% 10 = 0 THEN 'TransientError: the partner answered 503 Service Unavailable' END
FROM generate_series(1, %(rows)s) AS g
"""


class Peak:
    """The highest RSS a set of processes reached, sampled on a thread of its own."""

    def __init__(self, processes: Callable[[], list[psutil.Process]], interval: float = 0.02) -> None:
        self.processes = processes
        self.interval = interval
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for proc in self.processes():
                with suppress(psutil.NoSuchProcess):
                    self.mib = max(self.mib, proc.memory_info().rss / MIB)
            self._stop.wait(self.interval)

    @contextmanager
    def watching(self) -> Iterator[Peak]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def rss_now(procs: list[psutil.Process]) -> float:
    return max((p.memory_info().rss / MIB for p in procs), default=float("nan"))


def seed(rows: int) -> None:
    with pg_connect(libpq_url(DATABASE)) as conn:
        conn.execute(SEED, {"rows": rows})
        conn.commit()


def run(rows: int, source: str | None, keep: bool) -> list[list[object]]:
    create_database(DATABASE)
    try:
        with scratch_vhost(VHOST, keep=keep) as broker:
            return _measure(rows, source, broker)
    finally:
        if not keep:
            drop_database(DATABASE)


def _measure(rows: int, source: str | None, broker: str) -> list[list[object]]:
    port = free_port()
    extra = {
        "DATABASE_URL": database_url(DATABASE),
        "BROKER_URL": broker,
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
        "WORKER_METRICS_PORT": "0",
        "RELAY_METRICS_PORT": "0",
    }
    env = child_env(**extra)
    if source:
        env["PYTHONPATH"] = os.pathsep.join([source, env["PYTHONPATH"]])
    cwd = work_dir("export")
    subprocess_run([CONVEYOR, "migrate"], env)
    seed(rows)
    key = make_key(env, "enqueue,read")
    with processes() as procs:
        api = procs.start("api", [CONVEYOR, "api", "--port", str(port)], env, cwd)
        procs.start("relay", [CONVEYOR, "relay"], env, cwd)
        worker = procs.start("worker", [CONVEYOR, "worker", "--processes", "1", "--threads", "1"], env, cwd)
        base = f"http://127.0.0.1:{port}"
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            wait_until(lambda: _up(client), 60, "the API")
            wait_until(lambda: len(worker.tree()) > 1, 60, "the worker's process")
            time.sleep(3)  # the worker's process has imported and connected
            job_process = worker.tree()[1:]
            worker_before = rss_now(job_process)
            started = time.monotonic()
            with Peak(lambda: job_process).watching() as worker_peak:
                accepted = client.post("/api/v1/jobs", json={"task": EXPORT, "payload": {}})
                accepted.raise_for_status()
                job_id = accepted.json()["id"]
                wait_until(lambda: _finished(client, job_id), 1800, "the export", interval=0.2)
            export_seconds = time.monotonic() - started
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["state"] != "succeeded":
                raise RuntimeError(f"the export ended {job['state']}: {job['last_error']}")
            api_procs = api.tree()
            api_before = rss_now(api_procs)
            started = time.monotonic()
            size = 0
            artifact = client.stream("GET", f"/api/v1/jobs/{job_id}/artifact")
            with Peak(lambda: api_procs).watching() as api_peak, artifact as response:
                response.raise_for_status()
                for piece in response.iter_raw(65536):
                    size += len(piece)
            download_seconds = time.monotonic() - started
    return [
        [
            "worker job process (export)",
            f"{worker_before:.1f}",
            f"{worker_peak.mib:.1f}",
            f"{export_seconds:.1f}",
        ],
        ["api (download)", f"{api_before:.1f}", f"{api_peak.mib:.1f}", f"{download_seconds:.1f}"],
        ["file", f"{size / MIB:.1f} MiB", f"{job['result'].get('rows')} rows", ""],
    ]


def subprocess_run(argv: list[str], env: dict[str, str]) -> None:
    import subprocess

    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/health/live").status_code == 200
    except httpx.TransportError:
        return False


def _finished(client: httpx.Client, job_id: str) -> bool:
    return client.get(f"/api/v1/jobs/{job_id}").json()["state"] in {"succeeded", "dead", "cancelled"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="jobs in the ledger")
    parser.add_argument("--source", help="run the children from this `src` directory instead")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and vhost")
    args = parser.parse_args()
    print(f"{machine()}; source {args.source or source_version()}; {args.rows:,} jobs seeded")
    results = run(args.rows, args.source, args.keep)
    print(table(["what", "RSS before (MiB)", "peak RSS (MiB)", "seconds"], results))


if __name__ == "__main__":
    main()
