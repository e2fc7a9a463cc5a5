"""Every benchmark, one after the other, then each goal of the budget marked met or NOT met.

    python bench/run_all.py                  # drain (10,000 jobs), accept (20 s per system), timing (30 s)
    python bench/run_all.py --quick          # 2,000 jobs, 8 s runs, 20 rejected bodies: a smoke run
    python bench/run_all.py --scaling        # then 1, 2 and 4 worker processes, 1 and 2 relays
    python bench/run_all.py --profile        # then profile Conveyor's worker and API with py-spy
    python bench/run_all.py --markdown out.md

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
from pathlib import Path

import accept
import drain
import scaling
import timing
from _harness import ROOT, load_average, machine, source_version, table


def goals(
    drained: list[drain.DrainResult], accepted: list[accept.AcceptResult], timed: timing.TimingResult | None
) -> str:
    """DESIGN.md's performance budget, each goal with what this run measured."""
    rows: list[list[object]] = []

    def add(
        goal: str, measured: float | None, target: float, fmt: str, higher_is_better: bool = True
    ) -> None:
        if measured is None or measured != measured:  # missing, or NaN
            rows.append([goal, "not measured", fmt.format(target), "n/a"])
            return
        met = measured >= target if higher_is_better else measured <= target
        sign = ">=" if higher_is_better else "<="
        rows.append([goal, fmt.format(measured), f"{sign} {fmt.format(target)}", "met" if met else "NOT met"])

    def ratio(results: dict[str, float], system: str, peer: str) -> float | None:
        mine, theirs = results.get(system), results.get(peer)
        return mine / theirs if mine and theirs else None

    drain_rates = {r.system: r.rate for r in drained}
    accept_rates = {r.system: r.rate for r in accepted}
    add("drain vs Celery worker (threads)", ratio(drain_rates, "conveyor", "celery"), 1.0, "{:.2f}x")
    add(
        "drain vs Celery worker (prefork -c 1)",
        ratio(drain_rates, "conveyor", "celery-prefork"),
        1.0,
        "{:.2f}x",
    )
    add("drain vs raw Dramatiq worker", ratio(drain_rates, "conveyor", "dramatiq"), 0.8, "{:.2f}x")
    # The peers log nothing per job (Celery runs at -l warning); Conveyor logs one line at INFO.
    add(
        "the same two, Conveyor at LOG_LEVEL=WARNING: vs Celery threads",
        ratio(drain_rates, "conveyor-quiet", "celery"),
        1.0,
        "{:.2f}x",
    )
    add("... vs raw Dramatiq", ratio(drain_rates, "conveyor-quiet", "dramatiq"), 0.8, "{:.2f}x")
    add("accept (with a key) vs bare FastAPI 202", ratio(accept_rates, "conveyor", "bare"), 0.5, "{:.2f}x")
    add("accept vs FastAPI + Celery .delay()", ratio(accept_rates, "conveyor", "celery"), 2.0, "{:.2f}x")
    add("accept vs the same, async def", ratio(accept_rates, "conveyor", "celery-async"), 2.0, "{:.2f}x")
    rss = next((r.worker_rss_mib for r in drained if r.system == "conveyor"), None)
    add("worker RSS after 10,000 jobs (MiB)", rss, 80.0, "{:.1f}", higher_is_better=False)
    if timed is not None:
        measured = timed.goals()
        add("POST p99 at 200 req/s (ms)", measured["post p99"], 20.0, "{:.1f}", higher_is_better=False)
        add(
            "accept -> started p99 at 200 jobs/s (ms)",
            measured["accept -> started p99"],
            25.0,
            "{:.1f}",
            False,
        )
        add(
            "retry start after its due time, max (ms)", measured["retry lateness max"], 100.0, "{:.1f}", False
        )
        add(
            "schedule's job start after its tick, max (ms)",
            measured["tick lateness max"],
            100.0,
            "{:.1f}",
            False,
        )
    met = sum(1 for row in rows if row[3] == "met")
    return "\n".join(
        [
            "## The budget (DESIGN.md, Performance budget), from this run",
            "",
            table(["goal", "measured", "target", "verdict"], rows),
            "",
            f"{met} of {len(rows)} goals met.",
            "",
        ]
    )


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {load_average()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small runs, to check the set-up")
    parser.add_argument("--profile", action="store_true", help="also profile Conveyor's hot paths (py-spy)")
    parser.add_argument(
        "--scaling", action="store_true", help="also scale workers (1, 2, 4) and relays (1, 2)"
    )
    parser.add_argument("--markdown", type=Path, help="also write everything printed to this file")
    args = parser.parse_args(argv)

    drain_args = ["--jobs", "2000"] if args.quick else []
    accept_args = ["--duration", "8", "--rejected", "20"] if args.quick else []
    timing_args = ["--duration", "10"] if args.quick else []
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
        drained = drain.main(drain_args)
        print(f"Between the suites: `{uptime()}`\n")
        accepted = accept.main(accept_args)
        print(f"Between the suites: `{uptime()}`\n")
        timed: timing.TimingResult | None
        try:
            timed = timing.main(timing_args)
        except Exception as error:  # one failed suite spoils only its own goals
            print(f"timing FAILED: {error!r}\n")
            timed = None
        print(goals(drained, accepted, timed))
        if args.scaling:
            scaling.main(["--jobs", "2000"] if args.quick else [])
        if args.profile:
            print("# Profiles (py-spy, GIL-holding samples; profiled runs are slower)\n")
            drain.main([*drain_args, "--systems", "conveyor,dramatiq", "--profile"])
            accept.main([*accept_args, "--systems", "bare,conveyor", "--rejected", "0", "--profile"])
        print(f"At the end: `{uptime()}`; {time.monotonic() - started:.0f} s in all.")
    if args.markdown:
        args.markdown.write_text(out.getvalue())


if __name__ == "__main__":
    main()
