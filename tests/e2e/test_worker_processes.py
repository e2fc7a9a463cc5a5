"""`conveyor worker` of one process runs the jobs itself: no Dramatiq main process, no
exporter process, and the same answers to signals (`app.execution.alone`). Of more, it
becomes Dramatiq's main process, in the same pid, holding none of the CLI's imports."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.infra import Infra, free_port
from tests.support.stack import Process, Stack

ECHO = "app.tasks.example.echo"


@pytest.fixture
def stack(clean_ledger: Infra, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    processes = getattr(request, "param", 1)
    running = Stack(workdir=tmp_path, env=dict(os.environ) | {"WORKER_METRICS_PORT": str(free_port())})
    try:
        running.start_api()
        running.start_relay()
        running.start_worker(processes=processes, threads=2)
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


@pytest.mark.parametrize("stack", [2], indirect=True)
def test_two_worker_processes_run_under_dramatiqs_main_process_in_the_launched_pid(stack: Stack) -> None:
    worker = stack.processes["worker"]
    runs_a_job(stack)
    main = psutil.Process(worker.pid)
    assert main.cmdline()[1:3] == ["-m", "dramatiq"]
    wait_logged(worker, '"worker started"', 2)
    deadline = time.monotonic() + 30
    while len(main.children()) < 3:  # two worker processes, then the exporter
        assert time.monotonic() < deadline, main.children()
        time.sleep(0.1)

    assert worker.popen is not None
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=20) == 0, worker.log()[-3000:]
    assert worker.log().count('"worker stopped"') == 2
