"""The broker's copies of dead jobs: the messages RabbitMQ keeps in `<queue>.XQ`.

The ledger is the truth about dead jobs; an XQ message is a copy made when the job died
(kept 7 days by Dramatiq's default). Once the job is replayed or purged that copy is stale,
and `operate.actions` removes it: every XQ message is taken without acknowledgement, the
matching ones are acknowledged (removed), and closing the channel returns the rest to the
queue in their order. A copy is matched by job id and run, so a job that died again after
its replay keeps the copy of its new death.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from uuid import UUID

import orjson
import pika.exceptions
from dramatiq.common import xq_name

from app.operate.amqp import connect

Progress = Callable[[int], None]


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


def remove(
    broker_url: str, queue: str, runs: Collection[tuple[UUID, int]], on_message: Progress | None = None
) -> int:
    """Remove the copies of these (job id, run) pairs from `<queue>.XQ`; how many were removed.

    Looks at most at the messages the queue held when it started: messages that die
    meanwhile are left alone.
    """
    wanted = {(str(job_id), run) for job_id, run in runs}
    if not wanted:
        return 0
    connection = connect(broker_url)
    removed = 0
    try:
        channel = connection.channel()
        try:
            held = channel.queue_declare(xq_name(queue), passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        for _ in range(held):
            method, _properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
            if method is None:
                break
            if on_message is not None:
                on_message(1)
            run = run_of(body)
            if run in wanted:
                channel.basic_ack(method.delivery_tag)
                removed += 1
                wanted.discard(run)
                if not wanted:
                    break
        channel.close()  # the messages taken and not acknowledged go back to the queue
    finally:
        connection.close()
    return removed


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


def run_of(body: bytes) -> tuple[str, int] | None:
    """The (job id, run) a Dramatiq message of Conveyor carries in its options."""
    try:
        options = orjson.loads(body)["options"]
        return str(options["job_id"]), int(options.get("run", 1))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
