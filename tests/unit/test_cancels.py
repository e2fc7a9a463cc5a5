"""Interrupting a task: the exception lands inside the task, or the task ends Cancelled anyway,
and nothing is left pending for what its thread runs next."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from app.errors import Cancelled
from app.execution.cancels import interrupt, run_task
from app.jobs.context import JobContext
from app.ledger.jobs import Token


def new_job() -> JobContext:
    return JobContext(Token(uuid.uuid4(), 1, 1), "app.tasks.example.spin", 3, "host:1:abcdef")


def busy(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def test_a_task_that_never_looks_is_interrupted_where_it_runs() -> None:
    job = new_job()
    started = threading.Event()
    threading.Timer(0.05, lambda: started.wait() and interrupt(job)).start()
    with pytest.raises(Cancelled):
        run_task(job, lambda: (started.set(), busy(5.0)))
    assert job.interrupted


def test_a_job_asked_to_stop_before_its_thread_got_to_it_does_not_start() -> None:
    job = new_job()
    assert job.ask_to_cancel() is True
    ran = []
    with pytest.raises(Cancelled):
        run_task(job, lambda: ran.append(1))
    assert ran == []
    assert interrupt(job) is False, "a task that is not running is not interrupted"


@pytest.fixture
def quick_switches() -> Iterator[None]:
    """Threads take turns every few microseconds instead of every 5 ms: the race is run, not
    decided by who holds the GIL."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("quick_switches")
def test_an_interruption_racing_the_end_of_a_task_cancels_it_or_misses_it_and_leaves_nothing_pending() -> (
    None
):
    ends: Counter[str] = Counter()
    for round_ in range(200):
        job = new_job()
        inside = threading.Event()
        hit: list[bool] = []

        # From well inside the task to just past its end.
        delay = (round_ % 20) * 0.0001

        def interrupter(
            job: JobContext = job,
            inside: threading.Event = inside,
            hit: list[bool] = hit,
            delay: float = delay,
        ) -> None:
            inside.wait()
            busy(delay)
            hit.append(interrupt(job))

        thread = threading.Thread(target=interrupter)
        thread.start()
        try:
            run_task(job, lambda inside=inside: (inside.set(), busy(0.001)))
            end = "returned"
        except Cancelled:
            end = "cancelled"
        thread.join()
        try:
            busy(0.002)  # a pending exception would land here, in the thread's next work
            stray = False
        except Cancelled:
            stray = True
        assert not stray, f"round {round_}: an interruption landed after the task"
        assert (end == "cancelled") == hit[0], f"round {round_}: {end}, interrupt() said {hit[0]}"
        ends[end] += 1
    assert ends["returned"], ends
    assert ends["cancelled"], ends
