"""Counts the noop tasks a peer worker ran and notes when the first and the last one ran.

One `next()` on a shared counter per task, and a file write twice per run: the cheapest
way to time a drain from inside the worker that does not change what is measured.
"""

from __future__ import annotations

import itertools
import os
import time

_TARGET = int(os.environ.get("BENCH_N", "0"))
_PATH = os.environ.get("BENCH_MARK_FILE")
_counter = itertools.count(1)


def mark() -> None:
    n = next(_counter)  # atomic under the GIL, so threads need no lock
    if _PATH and (n == 1 or n == _TARGET):
        with open(_PATH, "a") as marks:
            marks.write(f"{n} {time.time()}\n")
