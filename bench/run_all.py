"""Every benchmark, one after the other: `python bench/run_all.py` (4 to 8 minutes on 2 cores).

    python bench/run_all.py                  # drain (10,000 jobs) then accept (20 s per system)
    python bench/run_all.py --quick          # 2,000 jobs, 8 s runs, 20 rejected bodies: a smoke run
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
from _harness import ROOT, load_average, machine, source_version


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
    parser.add_argument("--markdown", type=Path, help="also write everything printed to this file")
    args = parser.parse_args(argv)

    drain_args = ["--jobs", "2000"] if args.quick else []
    accept_args = ["--duration", "8", "--rejected", "20"] if args.quick else []
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
        drain.main(drain_args)
        print(f"Between the suites: `{uptime()}`\n")
        accept.main(accept_args)
        if args.profile:
            print("# Profiles (py-spy, GIL-holding samples; profiled runs are slower)\n")
            drain.main([*drain_args, "--systems", "conveyor,dramatiq", "--profile"])
            accept.main([*accept_args, "--systems", "bare,conveyor", "--rejected", "0", "--profile"])
        print(f"At the end: `{uptime()}`; {time.monotonic() - started:.0f} s in all.")
    if args.markdown:
        args.markdown.write_text(out.getvalue())


if __name__ == "__main__":
    main()
