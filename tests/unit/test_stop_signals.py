"""A worker takes a stop signal repeated at once as the same stop, and never logs from the handler."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from app.execution import shutdown


class NoLogging:
    """A logger that fails the test if a signal handler uses it: a handler can run inside a log
    call holding structlog's non-reentrant write lock, and logging there deadlocks."""

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"the signal handler logged ({name}: {args})")

        return refuse


@pytest.fixture
def stops() -> Iterator[list[int]]:
    """SIGTERM handled by a stand-in for Dramatiq's handler (which records each call), wrapped."""
    received: list[int] = []

    def dramatiq_handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGTERM, dramatiq_handler)
    try:
        shutdown.tolerate_repeated_stop_signals()
        yield received
    finally:
        signal.signal(signal.SIGTERM, original)
        shutdown._repeats[0] = 0


class Recording:
    """A logger that keeps what it was asked to log."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_a_repeated_stop_signal_is_counted_in_the_handler_and_logged_only_afterwards(
    stops: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutdown, "log", NoLogging())
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGTERM)  # handled on this thread before kill returns
    assert stops == [signal.SIGTERM], "the first stops the worker; the two repeats do not"

    recording = Recording()
    monkeypatch.setattr(shutdown, "log", recording)
    shutdown.log_repeated_stops()
    shutdown.log_repeated_stops()  # said once
    assert recording.lines == [
        ("a repeated stop signal is the same stop: finishing the running jobs first", {"repeats": 2})
    ]


def test_a_stop_signal_after_the_window_reaches_dramatiqs_handler_again(
    stops: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(shutdown.time, "monotonic", lambda: clock[0])
    os.kill(os.getpid(), signal.SIGTERM)
    clock[0] += shutdown.REPEAT_WINDOW_SECONDS + 0.1
    os.kill(os.getpid(), signal.SIGTERM)
    assert stops == [signal.SIGTERM, signal.SIGTERM], "a later signal still kills, as asked"
