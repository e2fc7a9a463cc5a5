"""A drain through the real stack on a 3-node cluster with quorum queues, and the two node losses
that matter: the queue's leader, and the node the worker and the relay are connected to.
Each: every job succeeds, each effect happens once, and the service comes back by itself."""

from __future__ import annotations

import time
from collections import Counter

import pika

from app.transport import rabbitmq
from tests.cluster.conftest import OnCluster
from tests.support.faults import EFFECT_TASK, post_many

JOBS = 400  # at 0.05 s each on 8 threads: a drain of 2.5 s at least, killed a tenth in


def drained(on_cluster: OnCluster, ids: list[str]) -> None:
    jobs = on_cluster.ledger.wait_terminal(ids, timeout=180)
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": len(ids)}, on_cluster.stack.logs()
    assert on_cluster.ledger.effects() == Counter(dict.fromkeys(ids, 1)), "each effect exactly once"


def succeeded(on_cluster: OnCluster) -> int:
    rows = on_cluster.ledger.query("SELECT count(*) AS n FROM jobs WHERE state = 'succeeded'")
    return int(rows[0]["n"])


def kill_mid_drain(on_cluster: OnCluster, node: int, ids: list[str]) -> tuple[list[str], float]:
    """Kill `node` once a tenth of the jobs succeeded, then post one more job: that job's id, and
    the seconds from the kill until it succeeded (the service back for new work)."""
    ledger = on_cluster.ledger
    ledger.wait_until(lambda: succeeded(on_cluster) >= len(ids) // 10, 120, "a tenth of the drain")
    on_cluster.cluster.nodes[node].kill()
    killed_at = time.monotonic()
    assert succeeded(on_cluster) < len(ids), "the node was killed mid-drain"
    probe = post_many(on_cluster.stack.base_url, EFFECT_TASK, [{}])
    ledger.wait_terminal(probe, timeout=120)
    return probe, time.monotonic() - killed_at


def test_a_drain_through_the_real_stack_on_quorum_queues_runs_every_job_once(on_cluster: OnCluster) -> None:
    on_cluster.start()
    on_cluster.start_worker()
    ids = post_many(on_cluster.stack.base_url, EFFECT_TASK, [{}] * JOBS)
    drained(on_cluster, ids)


def test_the_queue_leader_killed_mid_drain_loses_no_job_and_doubles_no_effect(on_cluster: OnCluster) -> None:
    # The queue is declared through the third node, which then leads it; the stack connects to
    # the first, so only the leader dies.
    connection = pika.BlockingConnection(rabbitmq.node_parameters(on_cluster.url((2,))))
    rabbitmq.declare(connection.channel(), "default", "quorum")
    connection.close()
    assert on_cluster.cluster.leader("default", on_cluster.vhost) == 2
    on_cluster.start()
    on_cluster.start_worker()
    ids = post_many(on_cluster.stack.base_url, EFFECT_TASK, [{"sleep_seconds": 0.05}] * JOBS)
    probe, recovery = kill_mid_drain(on_cluster, 2, ids)
    drained(on_cluster, ids + probe)
    assert on_cluster.cluster.leader("default", on_cluster.vhost) != 2
    print(f"leader killed: a job posted after the kill succeeded {recovery:.1f} s after it")


def test_the_node_the_worker_and_relay_use_killed_mid_drain_loses_no_job_and_doubles_no_effect(
    on_cluster: OnCluster,
) -> None:
    on_cluster.start()
    on_cluster.start_worker()
    ids = post_many(on_cluster.stack.base_url, EFFECT_TASK, [{"sleep_seconds": 0.05}] * JOBS)
    probe, recovery = kill_mid_drain(on_cluster, 0, ids)
    drained(on_cluster, ids + probe)
    print(f"connected node killed: a job posted after the kill succeeded {recovery:.1f} s after it")
