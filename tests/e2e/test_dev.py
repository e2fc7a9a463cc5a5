"""`conveyor dev` (what `make dev` runs): api, relay and worker together, and gone together."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from tests.support.infra import Infra, free_port
from tests.support.stack import CONVEYOR


def test_conveyor_dev_serves_the_api_and_stops_its_processes_on_sigterm(
    clean_ledger: Infra, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        [CONVEYOR, "dev", "--port", str(port)], env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and ready != 200:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code
            time.sleep(0.3)
        assert ready == 200, (tmp_path / "dev.log").read_text()
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 3, "api, relay and worker"
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"left behind: {[p.cmdline() for p in alive]}"
    finally:
        for process in [psutil.Process(dev.pid), *children] if dev.poll() is None else children:
            if process.is_running():
                process.kill()
        log.close()
