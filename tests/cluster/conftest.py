"""The cluster suite's set-up: a 3-node RabbitMQ cluster of its own (tests/support/cluster.py),
started once per run, and per test a vhost on it, an api and a relay with BROKER_URL naming
every node and BROKER_QUEUE_TYPE=quorum. It fails, never skips, without rabbitmq-server."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import faults
from tests.support.cluster import Cluster, missing
from tests.support.infra import Infra
from tests.support.stack import Process, Stack

CLUSTER_ENV = {
    "DIAGNOSTIC_TASKS": "true",
    "DB_POOL_SIZE": "3",
    "WORKER_SHUTDOWN_SECONDS": "4",
    # A message the broker lost would be published again only after this: far past the
    # suite's waits, so a loss fails a test instead of hiding behind the republish.
    "REPUBLISH_AFTER_SECONDS": "900",
    "BROKER_QUEUE_TYPE": "quorum",
}


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    problem = missing()
    if problem:
        pytest.fail(problem)
    cluster = Cluster(Path(tmp_path_factory.mktemp("rabbit-cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class OnCluster:
    """One test's view: the cluster, its vhost, the api and relay on it, the ledger."""

    cluster: Cluster
    vhost: str
    stack: Stack
    ledger: faults.Ledger

    def url(self, order: tuple[int, ...] = (0, 1, 2)) -> str:
        return self.cluster.url(self.vhost, order)

    def start(self) -> None:
        self.stack.start_api()
        self.stack.start_relay()
        self.stack.wait_api()

    def start_worker(self, threads: int = 8) -> Process:
        return self.stack.start_worker(threads=threads)


@pytest.fixture
def on_cluster(infra: Infra, rabbit_cluster: Cluster, tmp_path: Path) -> Iterator[OnCluster]:
    vhost = f"conveyor_cluster_{secrets.token_hex(4)}"
    rabbit_cluster.add_vhost(vhost)
    ledger = faults.Ledger(infra.libpq_url)
    ledger.reset()
    env = dict(os.environ) | CLUSTER_ENV | {"BROKER_URL": rabbit_cluster.url(vhost)}
    stack = Stack(workdir=tmp_path, env=env, diagnostics_over_http=True)
    try:
        yield OnCluster(rabbit_cluster, vhost, stack, ledger)
    finally:
        stack.stop()
        for index, node in enumerate(rabbit_cluster.nodes):
            if not node.alive():
                rabbit_cluster.restart(index)
        rabbit_cluster.ctl(0, "delete_vhost", vhost)
