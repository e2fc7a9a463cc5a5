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


def test_conveyor_dev_with_no_mail_server_starts_a_sink_and_the_readme_email_succeeds(
    clean_ledger: Infra, tmp_path: Path
) -> None:
    port, smtp_port = free_port(), free_port()  # nothing listens on smtp_port
    out = tmp_path / "dev.log"
    log = out.open("wb")
    env = {**os.environ, "SMTP_PORT": str(smtp_port)}
    dev = subprocess.Popen(
        [CONVEYOR, "dev", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        key = None
        while time.monotonic() < deadline and key is None:
            key = next(
                (line.split()[1] for line in out.read_text().splitlines() if line.strip().startswith("key ")),
                None,
            )
            time.sleep(0.2)
        assert key is not None, out.read_text()
        assert f"SMTP         127.0.0.1:{smtp_port} (a development sink" in out.read_text()
        headers = {"Authorization": f"Bearer {key}"}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        sent = httpx.post(
            f"{base}/api/v1/emails",
            json={"to": "ada@example.com", "subject": "Welcome", "body": "Hello!"},
            headers=headers,
            timeout=10,
        )
        assert sent.status_code == 202, sent.text
        state = None
        while time.monotonic() < deadline and state != "succeeded":
            state = httpx.get(f"{base}{sent.headers['location']}", headers=headers, timeout=5).json()["state"]
            time.sleep(0.3)
        assert state == "succeeded", out.read_text()[-3000:]
        assert "[mail sink] to ada@example.com: Welcome" in out.read_text()
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dev.kill()
        log.close()
