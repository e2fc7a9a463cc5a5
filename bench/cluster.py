"""Cluster: bench/drain.py's Conveyor drain on one classic node beside a 3-node quorum cluster, one run.

    .venv/bin/python bench/cluster.py                 # 5,000 jobs each
    .venv/bin/python bench/cluster.py --jobs 10000 --rounds 2

First the drain against the local RabbitMQ (5672, classic queues, a scratch vhost), then the
same drain against the suite's 3-node cluster (tests/support/cluster.py: ports 5681-5683, an
epmd and a cookie of its own), with BROKER_URL naming all three nodes and
BROKER_QUEUE_TYPE=quorum; interleaved when --rounds is more than one. Each drain prints its
own table (the relay's publishing rate and the worker's drain rate); the last lines compare
them. The cluster is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.cluster import CTL, EPMD_PORT, Cluster  # noqa: E402

DRAIN = re.compile(r"^drain: conveyor: ([\d,]+) jobs/s", re.MULTILINE)
RELAY = re.compile(r"relay published at ([\d,]+) jobs/s")
ONE_NODE, CLUSTER = "1 classic node", "3-node quorum cluster"


def drain(jobs: int, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drain.py"), "--systems", "conveyor", "--jobs", str(jobs)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout, done.stderr, sep="\n", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/drain.py failed ({done.returncode})")
    return done.stdout + done.stderr


def run(jobs: int, rounds: int) -> dict[str, list[str]]:
    """Each label's drain outputs, one per round; the cluster is started and stopped here."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
    try:
        cluster.start()
        base = ";".join(f"amqp://guest:guest@127.0.0.1:{node.port}" for node in cluster.nodes)
        ctl = f"{CTL} -n {cluster.nodes[0].name} --erlang-cookie {cluster.cookie}"
        on_cluster = dict(
            os.environ,
            BENCH_AMQP_BASE=base,
            BENCH_RABBITMQCTL=ctl,
            BENCH_QUEUE_TYPE="quorum",
            ERL_EPMD_PORT=str(EPMD_PORT),
            BENCH_SCRATCH="drain_cluster",
        )
        one_node = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_AMQP")}
        outputs: dict[str, list[str]] = {ONE_NODE: [], CLUSTER: []}
        for _ in range(rounds):
            print("=== 1 node (5672), classic queues ===", flush=True)
            outputs[ONE_NODE].append(drain(jobs, one_node))
            print("=== 3-node cluster (5681-5683), quorum queues ===", flush=True)
            outputs[CLUSTER].append(drain(jobs, on_cluster))
    finally:
        cluster.stop()
    return outputs


def rates(jobs: int, rounds: int = 1) -> dict[str, float]:
    """The median drain (jobs/s) on one classic node and on the cluster: bench/run_all.py's goal."""
    found = {
        label: [float(m.group(1).replace(",", "")) for text in texts for m in DRAIN.finditer(text)]
        for label, texts in run(jobs, rounds).items()
    }
    return {label: statistics.median(values) for label, values in found.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    opts = parser.parse_args()
    outputs = run(opts.jobs, opts.rounds)
    print("=== summary (jobs/s; every round) ===")
    for label, texts in outputs.items():
        drains = ", ".join(m.group(1) for text in texts for m in DRAIN.finditer(text))
        relays = ", ".join(m.group(1) for text in texts for m in RELAY.finditer(text))
        print(f"{label:<24} drain {drains or '?'}   relay publish {relays or '?'}")


if __name__ == "__main__":
    main()
