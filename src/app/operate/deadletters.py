"""The broker's dead-letter queues as operators see them: how many copies each holds, and
emptying them (`conveyor dlq purge --all`).

The ledger is the truth about dead jobs; a `<queue>.XQ` message is a copy of a dead run
(kept 7 days by Dramatiq's default). Stale copies of replayed or discarded runs are taken
out by the relay (`app.relay.deadletters`).
"""

from __future__ import annotations

from collections.abc import Iterable

import pika.exceptions
from dramatiq.common import xq_name

from app.operate.amqp import connect


def purge(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """Empty the dead-letter queue of each queue; how many messages each held."""
    purged: dict[str, int] = {}
    connection = connect(broker_url)
    try:
        for queue in sorted(set(queues)):
            channel = connection.channel()
            try:
                purged[queue] = channel.queue_purge(xq_name(queue)).method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                purged[queue] = 0  # never declared: nothing ever died there
    finally:
        connection.close()
    return purged


def depth(broker_url: str, queue: str) -> int:
    """Messages in `<queue>.XQ` (0 when it was never declared)."""
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        try:
            count: int = channel.queue_declare(xq_name(queue), passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        channel.close()
        return count
    finally:
        connection.close()
