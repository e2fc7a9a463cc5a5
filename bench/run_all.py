"""Every benchmark, one after the other, then each goal of the budget marked met or NOT met.

    python bench/run_all.py                  # 10,000 jobs a drain, full-length runs of every suite
    python bench/run_all.py --quick          # 2,000 jobs, 8 s runs: a smoke run of the set-up
    python bench/run_all.py --peers pgqueuer,oban    # only these PostgreSQL-backed queues
    python bench/run_all.py --peers none     # none of them (no venvs made)
    python bench/run_all.py --cluster        # also the 3-node quorum cluster drain (bench/cluster.py)
    python bench/run_all.py --scaling        # then 1, 2 and 4 worker processes, 1 and 2 relays
    python bench/run_all.py --profile        # then profile Conveyor's worker and API with py-spy
    python bench/run_all.py --markdown out.md

The suites, in order: drain (Conveyor, raw Dramatiq and Celery workers; Conveyor with and
without flow control), the PostgreSQL-backed Python queues (bench/durable.py: PgQueuer,
oban-py, Chancy, each in a venv of its own under bench/.venvs, made on first use), bulk
enqueue (enqueue_many and the batch route beside PgQueuer's), accept, timing, events. Every
drain has the same N. A suite or a peer that fails or cannot be set up leaves its goals
"not measured", with the reason; the others still run.

Benchmarks on a busy machine measure the machine: run this on a quiet one, and read the
load averages printed beside every row before trusting a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import accept
import bulk
import drain
import durable
import events
import scaling
import timing
from _goals import Run, goals
from _harness import ROOT, load_average, machine, source_version

T = TypeVar("T")
DRAIN_SYSTEMS = "conveyor,conveyor-quiet,dramatiq,celery,celery-prefork,conveyor-live,conveyor-flow"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {load_average()}"


def suite(run: Run, name: str, measure: Callable[[], T]) -> T | None:
    """One suite; its failure (or a missing tool) spoils only its own goals."""
    print(f"Before {name}: `{uptime()}`\n")
    try:
        return measure()
    except (Exception, SystemExit) as error:
        why = f"{name} failed: {type(error).__name__}: {str(error)[:200]}"
        print(f"{why}\n")
        run.skipped[name] = why
        return None


def cluster_rates(jobs: int) -> dict[str, float]:
    import cluster

    return cluster.rates(jobs)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small runs, to check the set-up")
    parser.add_argument(
        "--peers",
        default=",".join(durable.DEFAULT_PEERS),
        help=f"PostgreSQL-backed queues to run, comma-separated, of {', '.join(durable.PEERS)};"
        " 'none' for none (default: %(default)s)",
    )
    parser.add_argument("--cluster", action="store_true", help="also drain through a 3-node quorum cluster")
    parser.add_argument("--profile", action="store_true", help="also profile Conveyor's hot paths (py-spy)")
    parser.add_argument(
        "--scaling", action="store_true", help="also scale workers (1, 2, 4) and relays (1, 2)"
    )
    parser.add_argument("--markdown", type=Path, help="also write everything printed to this file")
    args = parser.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    unknown = set(peers) - set(durable.PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))} (known: {', '.join(durable.PEERS)})")
    args.peers = peers
    return args


def measure(args: argparse.Namespace) -> Run:
    jobs = 2_000 if args.quick else 10_000
    quick = args.quick
    run = Run(jobs)
    drain_args = ["--jobs", str(jobs), "--systems", DRAIN_SYSTEMS]
    run.drained = suite(run, "drain", lambda: drain.main(drain_args)) or []
    if args.peers:
        peer_args = ["--jobs", str(jobs), "--peers", ",".join(args.peers)]
        peer_args += ["--single", "200"] if quick else []
        run.peers = suite(run, "peers", lambda: durable.main(peer_args)) or []
    bulk_args = ["--jobs", str(jobs), "--peers", "pgqueuer" if "pgqueuer" in args.peers else ""]
    bulk_args += ["--http-jobs", "10000", "--rounds", "1"] if quick else []
    run.bulk = suite(run, "bulk", lambda: bulk.main(bulk_args))
    accept_args = ["--duration", "8", "--rejected", "20"] if quick else []
    run.accepted = suite(run, "accept", lambda: accept.main(accept_args)) or []
    run.timed = suite(run, "timing", lambda: timing.main(["--duration", "10"] if quick else []))
    run.events = suite(run, "events", lambda: events.main(["--duration", "8"] if quick else []))
    if args.cluster:
        run.cluster = suite(run, "cluster", lambda: cluster_rates(jobs))
    else:
        run.skipped["cluster"] = "starts a 3-node RabbitMQ cluster: add --cluster"
    return run


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            sys.__stdout__.write(text)  # type: ignore[union-attr]
            out.write(text)
            return len(text)

    started = time.monotonic()
    with contextlib.redirect_stdout(Tee()):
        print(f"# Conveyor benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
        print(f"Machine: {machine()}. Source: {source_version()} ({ROOT}).")
        print(f"At the start: `{uptime()}`\n")
        run = measure(args)
        print(goals(run))
        if args.scaling:
            scaling.main(["--jobs", "2000"] if args.quick else [])
        if args.profile:
            print("# Profiles (py-spy, GIL-holding samples; profiled runs are slower)\n")
            drain_args = ["--jobs", str(run.jobs)]
            drain.main([*drain_args, "--systems", "conveyor,dramatiq", "--profile"])
            accept_args = ["--duration", "8", "--rejected", "20"] if args.quick else []
            accept.main([*accept_args, "--systems", "bare,conveyor", "--rejected", "0", "--profile"])
        print(f"At the end: `{uptime()}`; {time.monotonic() - started:.0f} s in all.")
    if args.markdown:
        args.markdown.write_text(out.getvalue())


if __name__ == "__main__":
    main()
