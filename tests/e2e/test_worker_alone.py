"""`conveyor worker` of one process runs the jobs itself: no Dramatiq main process, no
exporter process, and the same answers to signals (`app.execution.alone`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.infra import Infra
from tests.support.stack import Process, Stack

ECHO = "app.tasks.example.echo"


@pytest.fixture
def stack(clean_ledger: Infra, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(workdir=tmp_path, env=dict(os.environ))
    try:
        running.start_api()
        running.start_relay()
        running.start_worker(processes=1, threads=2)
        running.wait_ready()
        yield running
    finally:
        running.stop()


def runs_a_job(stack: Stack) -> None:
    job_id = stack.post_job(ECHO, {"message": "hello"})
    assert stack.wait_for([job_id])[job_id]["state"] == "succeeded"


def wait_logged(process: Process, needle: str, times: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while process.log().count(needle) < times:
        assert time.monotonic() < deadline, f"{needle!r} not logged {times}x:\n{process.log()[-3000:]}"
        time.sleep(0.1)


def test_one_worker_process_is_the_whole_tree_and_a_sigint_stops_it_gracefully(stack: Stack) -> None:
    worker = stack.processes["worker"]
    runs_a_job(stack)
    assert psutil.Process(worker.pid).children(recursive=True) == []

    assert worker.popen is not None
    worker.popen.send_signal(signal.SIGINT)
    assert worker.popen.wait(timeout=20) == 0, worker.log()[-3000:]
    assert '"worker stopped"' in worker.log()


def test_a_sighup_restarts_the_worker_in_the_same_process(stack: Stack) -> None:
    worker = stack.processes["worker"]
    wait_logged(worker, '"worker started"', 1)
    assert worker.popen is not None
    worker.popen.send_signal(signal.SIGHUP)
    wait_logged(worker, '"worker started"', 2)
    assert worker.alive()
    assert '"worker stopped"' in worker.log()
    runs_a_job(stack)
