"""A worker process stops gracefully once, however many termination signals reach it at once.

Dramatiq's worker process takes its first SIGTERM as "finish what you run, then stop" and a
second as "die now". But one stop often delivers two: a signal to the whole process group
(Ctrl-C in a terminal, `kill -TERM -<pgid>`, systemd's default KillMode) reaches the worker
process directly, and Dramatiq's main process forwards its own copy a moment later. The
second then killed the worker with its jobs half done. Here a repeat within
REPEAT_WINDOW_SECONDS of the first is the same stop; a later one still kills, as asked.

The handler only counts repeats: the line that says so is logged later, off the handler
(`log_repeated_stops`, at the worker's shutdown). A handler runs on the main thread between
any two bytecodes, also inside a log call that holds structlog's (non-reentrant) write lock;
logging from it there deadlocked the process, every thread that logs waiting on that lock.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

from app.logs import get_logger

log = get_logger("conveyor.worker")

REPEAT_WINDOW_SECONDS = 2.0

_repeats = [0]  # repeated stop signals taken as the first, not yet logged


def tolerate_repeated_stop_signals() -> None:
    """Wrap the process's SIGTERM handler; call it on the main thread, after Dramatiq set it."""
    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler) or getattr(handler, "conveyor_patient", False):
        return
    first: list[float] = []

    def on_term(signum: int, frame: FrameType | None) -> Any:
        now = time.monotonic()
        if first and now - first[0] < REPEAT_WINDOW_SECONDS:
            _repeats[0] += 1  # no logging here (see the module's docstring)
            return None
        first[:] = [now]
        return handler(signum, frame)

    on_term.conveyor_patient = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_term)


def log_repeated_stops() -> None:
    """Say, off the signal handler, how many repeated stop signals were taken as the first."""
    repeats, _repeats[0] = _repeats[0], 0
    if repeats:
        log.info("a repeated stop signal is the same stop: finishing the running jobs first", repeats=repeats)
