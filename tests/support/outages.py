"""Real outages of the shared RabbitMQ and PostgreSQL: stop, kill, restart, and always bring
them back. Every wait is bounded; every stop is undone in a `finally`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions

from tests.support.faults import amqp


def _run(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def rabbitmqctl(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return _run(exe, "-q", *args, timeout=timeout)


ROOT_VHOST_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def rabbitmq_answers() -> bool:
    """True when RabbitMQ accepts an AMQP connection (cheaper than asking rabbitmqctl)."""
    if not _port_open(5672):
        return False
    try:
        amqp(ROOT_VHOST_URL).close()
        return True
    except (pika.exceptions.AMQPError, OSError):
        return False


def wait_rabbitmq(timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not rabbitmq_answers():
        if time.monotonic() > deadline:
            raise AssertionError(f"RabbitMQ did not come back within {timeout}s")
        time.sleep(1)


def _beam_pids() -> list[int]:
    found = _run("pgrep", "-u", "rabbitmq", "-f", "beam.smp")
    return [int(pid) for pid in found.stdout.split()]


def ensure_rabbitmq() -> None:
    """Start RabbitMQ if it is not running; wait until it answers."""
    if rabbitmq_answers():
        return
    if _beam_pids():
        rabbitmqctl("start_app")
    else:
        _run(shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server", "-detached")
    rabbitmqctl("await_startup", "--timeout", "120", timeout=150)
    wait_rabbitmq()


@contextlib.contextmanager
def rabbitmq_down(mode: str) -> Iterator[None]:
    """Stop RabbitMQ for the body: `app` (stop_app) or `kill` (SIGKILL of the Erlang VM)."""
    try:
        if mode == "app":
            result = rabbitmqctl("stop_app")
            assert result.returncode == 0, result.stderr
        elif mode == "kill":
            pids = _beam_pids()
            assert pids, "no RabbitMQ Erlang VM to kill"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while _beam_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            raise ValueError(mode)
        yield
    finally:
        ensure_rabbitmq()


def rabbitmq_hard_kill_allowed() -> bool:
    return bool(shutil.which("rabbitmq-server")) and bool(_beam_pids())


def postgres_cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql"))
    return versions[-1], "main"


def postgres_answers() -> bool:
    return _run("pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", timeout=10).returncode == 0


def wait_postgres(timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not postgres_answers():
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL did not come back within {timeout}s")
        time.sleep(0.5)


def restart_postgres() -> float:
    """Restart the shared PostgreSQL (fast mode: sessions are cut); the seconds it was away."""
    version, cluster = postgres_cluster()
    started = time.monotonic()
    try:
        result = _run("pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart", timeout=120)
        assert result.returncode == 0, result.stderr
    finally:
        if not postgres_answers():
            _run("pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start", timeout=120)
        wait_postgres()
    return time.monotonic() - started


def postgres_restart_allowed() -> bool:
    return Path("/etc/postgresql").is_dir() and bool(shutil.which("pg_ctlcluster"))


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False
