"""Publish: the relay's publishing rate with publisher confirms beside AMQP transactions, one run.

    .venv/bin/python bench/publish.py                      # the local RabbitMQ, classic queues
    .venv/bin/python bench/publish.py --cluster            # and a 3-node cluster, quorum queues
    .venv/bin/python bench/publish.py --messages 50000 --batch 500 --rounds 3

The relay publishes a batch (RELAY_BATCH_SIZE, 500 by default) and counts its rows published
only once the broker has them. This times exactly that code (`app.transport.confirms`):
`ConfirmingPublisher` (what the relay uses: the batch published, every confirm awaited) and
`TxPublisher` (what it used before: one AMQP transaction per batch), in interleaved rounds,
on persistent doorbell messages to a queue of a scratch vhost. `--cluster` also starts the
suite's 3-node cluster (tests/support/cluster.py, ports 5681-5683) and measures quorum queues
there. The local RabbitMQ on 5672 is only given a vhost of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dramatiq import Message  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.infra import rabbitmqctl  # noqa: E402

from app.transport import rabbitmq  # noqa: E402
from app.transport.confirms import ConfirmingPublisher, TxPublisher  # noqa: E402

QUEUE = "bench_publish"


def doorbell(n: int) -> Message[None]:
    return Message(
        queue_name=QUEUE,
        actor_name="app.tasks.example.echo",
        args=(),
        kwargs={},
        options={"job_id": f"00000000-0000-4000-8000-{n:012d}", "run": 1},
    )


def rate(kind: type[ConfirmingPublisher], url: str, queue_type: str, messages: int, batch: int) -> float:
    """Messages per second published (and confirmed or committed) in batches of `batch`."""
    publisher = kind(url, queue_type=queue_type)
    bells = [(doorbell(n), 0) for n in range(batch)]
    try:
        publisher.publish(bells[:1])  # connection, channel and queue declared before timing
        started = time.perf_counter()
        for _ in range(messages // batch):
            publisher.publish(bells)
        elapsed = time.perf_counter() - started
    finally:
        publisher.close()
    return (messages // batch) * batch / elapsed


def purge(url: str) -> None:
    connection = rabbitmq.connect(url)
    try:
        connection.channel().queue_purge(QUEUE)
    finally:
        connection.close()


def measure(label: str, url: str, queue_type: str, opts: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"transactions": [], "confirms": []}
    for _ in range(opts.rounds):
        for name, kind in (("transactions", TxPublisher), ("confirms", ConfirmingPublisher)):
            results[name].append(rate(kind, url, queue_type, opts.messages, opts.batch))
            purge(url)
    for name, rates in results.items():
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{label:<32} {name:<13} best {max(rates):>8,.0f} msg/s   rounds: {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="per publisher and round")
    parser.add_argument("--batch", type=int, default=500, help="messages per batch (RELAY_BATCH_SIZE)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="also a 3-node cluster with quorum queues")
    opts = parser.parse_args()

    vhost = f"bench_publish_{os.getpid()}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        measure("1 node (5672), classic", f"amqp://guest:guest@127.0.0.1:5672/{vhost}", "classic", opts)
    finally:
        rabbitmqctl("delete_vhost", vhost)
    if opts.cluster:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
        try:
            cluster.start()
            cluster.add_vhost(vhost)
            measure("3-node cluster, quorum", cluster.url(vhost), "quorum", opts)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
