"""The fault suite's set-up: one api and one relay for the whole suite, workers per test.

Every process of the suite reaches RabbitMQ through a TCP proxy, so a test can make the
broker unreachable without touching the RabbitMQ that other processes on the machine
share. The diagnostics tasks are on, and its API accepts them over HTTP (a test-only API:
tests/support/diagnostic_api.py); database pools are small, because the PostgreSQL
here is shared too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import faults, outages
from tests.support.infra import Infra
from tests.support.pgpair import PairUnavailable, PgPair
from tests.support.proxy import TcpProxy
from tests.support.stack import Stack

FAULT_ENV = {
    "DIAGNOSTIC_TASKS": "true",
    "DB_POOL_SIZE": "2",
    "WORKER_SHUTDOWN_SECONDS": "4",
    "REPUBLISH_AFTER_SECONDS": "20",
}


@dataclass
class Conveyor:
    """One fault test's view: the running api and relay, its own workers, the ledger."""

    stack: Stack
    infra: Infra
    proxy: TcpProxy
    ledger: faults.Ledger
    workers: faults.Workers

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def broker_url(self) -> str:
        """Straight to RabbitMQ, past the proxy: for the test's own publishing and peeking."""
        return self.infra.broker_url

    def logs(self) -> str:
        return self.stack.logs()


@pytest.fixture(scope="package")
def rabbit_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", 5672)) as proxy:
        yield proxy


@pytest.fixture(scope="package")
def base_stack(
    infra: Infra, rabbit_proxy: TcpProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = dict(os.environ) | FAULT_ENV
    env["BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{rabbit_proxy.port}/{quote(infra.vhost, safe='')}"
    stack = Stack(workdir=Path(tmp_path_factory.mktemp("faults")), env=env, diagnostics_over_http=True)
    try:
        stack.start_api()
        stack.start_relay()
        stack.wait_api()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def conveyor(base_stack: Stack, infra: Infra, rabbit_proxy: TcpProxy) -> Iterator[Conveyor]:
    ledger = faults.Ledger(infra.libpq_url)
    outages.ensure_rabbitmq()
    outages.wait_postgres()
    rabbit_proxy.restore()
    ledger.reset()
    faults.purge_queues(infra.broker_url)
    workers = faults.Workers(base_stack)
    try:
        yield Conveyor(base_stack, infra, rabbit_proxy, ledger, workers)
    finally:
        rabbit_proxy.restore()
        workers.kill_all()  # the test is over: nothing left to finish gracefully
        for name in [n for n in base_stack.processes if n.startswith("worker-")]:
            del base_stack.processes[name]


@pytest.fixture(scope="session")
def pg_pair() -> Iterator[PgPair]:
    """A PostgreSQL primary and its synchronous standby on ports of their own (5441, 5442), once
    per run. A test that fails the primary over leaves a pair behind (`rebuild_standby`); the
    primary may then be either port, so tests reach it through the pair's multi-host URL.
    Missing binaries or taken ports fail the test, never skip it."""
    pair = PgPair()
    try:
        pair.start()
    except (PairUnavailable, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or ""
        pair.stop()
        pytest.fail(f"no PostgreSQL pair: {error} {detail}")
    try:
        yield pair
    finally:
        pair.stop()
