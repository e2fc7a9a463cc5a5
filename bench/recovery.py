"""Recovery: how long jobs wait when a worker dies (SIGKILL) or freezes (SIGSTOP) mid-work.

    .venv/bin/python bench/recovery.py [--fault kill|freeze|both] [--jobs 80] [--lease 5]

Two workers (4 threads each) drain `--jobs` sleep jobs of one second; once the first worker
runs jobs and holds prefetched ones, it is killed or frozen. Printed: seconds from the fault
to the last job done, and how many jobs were unfinished 30, 60 and 90 s after it. A frozen
worker is thawed at the end, and every job must have run once in effect. It runs the real
processes against a database and a vhost of its own, and touches no shared service.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import infra  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

CHECKPOINTS = (30.0, 60.0, 90.0)
GIVE_UP_SECONDS = 180.0


def env(lease: float) -> dict[str, str]:
    return {
        "ENVIRONMENT": "test",
        "LEASE_SECONDS": str(lease),
        "HEARTBEAT_SECONDS": str(min(1.0, lease / 3)),
        "RELAY_SWEEP_SECONDS": "0.5",
        "WORKER_METRICS_PORT": "0",
        "WORKER_SHUTDOWN_SECONDS": "5",
        "DB_POOL_SIZE": "3",
        "LOG_FORMAT": "json",
    }


def run(fault: str, jobs: int, lease: float) -> dict[str, object]:
    scratch = infra.new_infra()
    infra.create(scratch)
    workdir = Path(tempfile.mkdtemp(prefix=f"conveyor-recovery-{fault}-"))
    base = dict(os.environ) | env(lease)
    base |= {"DATABASE_URL": scratch.database_url, "BROKER_URL": scratch.broker_url}
    from app.ledger.migrate import upgrade

    upgrade(scratch.database_url)
    stack = Stack(workdir=workdir, env=base)
    try:
        stack.start_api()
        stack.start_relay()
        victim = stack.start_worker("worker-a", threads=4)
        stack.wait_ready()
        ids = [stack.post_job("app.tasks.example.sleep", {"seconds": 1.0}) for _ in range(jobs)]
        time.sleep(1.5)  # the victim runs jobs and holds prefetched ones
        stack.start_worker("worker-b", threads=4)
        struck = time.monotonic()
        victim.signal_group(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        unfinished: dict[str, int] = {}
        last_done = None
        with stack.client() as client:
            while time.monotonic() - struck < GIVE_UP_SECONDS:
                states = [client.get(f"/api/v1/jobs/{job_id}").json()["state"] for job_id in ids]
                left = sum(state != "succeeded" for state in states)
                elapsed = time.monotonic() - struck
                for mark in CHECKPOINTS:
                    if elapsed >= mark and f"{mark:.0f}s" not in unfinished:
                        unfinished[f"{mark:.0f}s"] = left
                if left == 0:
                    last_done = elapsed
                    break
                time.sleep(0.25)
        if fault == "freeze":
            victim.signal_group(signal.SIGCONT)
            time.sleep(3)
        runs = [stack.job(job_id)["attempts"] for job_id in ids]
        return {
            "fault": fault,
            "jobs": jobs,
            "lease_s": lease,
            "fault_to_last_done_s": None if last_done is None else round(last_done, 1),
            "unfinished_after": unfinished,
            "victim_alive_after": victim.alive(),
            "jobs_with_more_than_one_attempt": sum(attempts > 1 for attempts in runs),
        }
    finally:
        stack.stop()
        infra.drop(scratch)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fault", choices=["kill", "freeze", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=80)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()
    for fault in ("kill", "freeze") if args.fault == "both" else (args.fault,):
        print(run(fault, args.jobs, args.lease), flush=True)


if __name__ == "__main__":
    main()
