"""Every healthcheck compose and the image declare, run for real against the local services."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.static.shipping import (
    DOCKERFILE,
    dockerfile_stages,
    healthcheck_argv,
    service,
)
from tests.support.infra import Infra
from tests.support.stack import CONVEYOR, Stack

pytestmark = pytest.mark.static

CHECK_TIMEOUT_SECONDS = 30


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if command[0] == "conveyor":
        command = [CONVEYOR, *command[1:]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECONDS)


def stack_env(stack: Stack) -> dict[str, str]:
    """The stack's environment, with the API where this stack serves it (compose: 127.0.0.1:8000)."""
    return {**stack.env, "API_BASE_URL": stack.base_url}


def compose_check(name: str) -> list[str]:
    return healthcheck_argv(service(name)["healthcheck"]["test"])


def image_check() -> list[str]:
    (check,) = dockerfile_stages(DOCKERFILE.read_text())[-1].all("HEALTHCHECK")
    return check.exec_form()


@pytest.mark.e2e
def test_the_api_worker_relay_and_image_healthchecks_pass_against_a_running_stack(stack: Stack) -> None:
    for command in (compose_check("api"), compose_check("worker"), compose_check("relay"), image_check()):
        result = run(command, stack_env(stack))
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


@pytest.mark.e2e
def test_the_worker_healthcheck_fails_once_the_worker_has_stopped(stack: Stack) -> None:
    stack.processes["worker"].stop()
    result = run(compose_check("worker"), stack_env(stack))
    assert result.returncode != 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_the_relay_healthcheck_fails_once_the_relay_has_stopped(stack: Stack) -> None:
    stack.processes["relay"].stop()
    result = run(compose_check("relay"), stack_env(stack))
    assert result.returncode != 0, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("pg_isready") is None, reason="pg_isready not installed")
def test_the_postgres_healthcheck_passes_against_the_local_postgresql(infra: Infra) -> None:
    env = {**os.environ, "POSTGRES_USER": "postgres", "POSTGRES_DB": infra.database, "PGHOST": "127.0.0.1"}
    result = run(compose_check("postgres"), env)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = run(compose_check("postgres"), {**env, "PGPORT": "1"})
    assert missing.returncode != 0, "the check must fail when nothing answers"


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("rabbitmq-diagnostics") is None or os.geteuid() != 0,
    reason="rabbitmq-diagnostics not installed, or not root (it needs the node's Erlang cookie)",
)
def test_the_rabbitmq_healthcheck_passes_against_the_local_rabbitmq(infra: Infra) -> None:
    result = run(compose_check("rabbitmq"), {**os.environ, "HOME": str(Path("~root").expanduser())})
    assert result.returncode == 0, result.stdout + result.stderr
