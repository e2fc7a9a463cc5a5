"""Readiness and `conveyor health` as the containers use them, with the real processes running."""

from __future__ import annotations

import socket
import subprocess
import time

from tests.support.stack import CONVEYOR, Stack


def conveyor_health(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "API_BASE_URL": stack.base_url}
    return subprocess.run(
        [CONVEYOR, "health", *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_each_component_is_healthy_while_the_stack_runs_and_the_worker_check_fails_once_it_stops(
    stack: Stack,
) -> None:
    for component in ("api", "worker", "broker", "db"):
        result = conveyor_health(stack, "--component", component)
        assert result.returncode == 0, (component, result.stderr)
        assert result.stdout.startswith("healthy: ")
    assert conveyor_health(stack).returncode == 0

    stack.processes["worker"].stop()
    deadline = time.monotonic() + 10
    with stack.client() as client:
        while (response := client.get("/health/ready")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["worker"]["ok"] is False
    assert "no worker sent a heartbeat" in body["checks"]["worker"]["reason"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True

    result = conveyor_health(stack, "--component", "worker")
    assert result.returncode == 1
    assert result.stderr.startswith(f"unhealthy: worker: no worker on host {socket.gethostname()}")
    assert conveyor_health(stack, "--component", "api").returncode == 0
    # The test environment sets WORKER_METRICS_PORT=0: no exporter process was started.
    assert "worker metrics export" not in stack.processes["worker"].log()
