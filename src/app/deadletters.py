"""The broker's copies of dead jobs: the messages RabbitMQ keeps in `<queue>.XQ`.

The ledger is the truth about dead jobs; an XQ message is a copy made when the job died
(kept 7 days by Dramatiq's default). Once the job is replayed or purged that copy is stale,
so the CLI removes it: every XQ message is taken without acknowledgement, the matching
ones are acknowledged (removed), and closing the channel returns the rest to the queue in
their order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from uuid import UUID

import orjson
import pika
import pika.exceptions
from dramatiq.common import xq_name

from app.health import PROBE_TIMEOUT_SECONDS
from app.logs import get_logger

log = get_logger("conveyor.deadletters")

Progress = Callable[[int], None]


def _connect(broker_url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(broker_url)
    params.connection_attempts = 1
    params.socket_timeout = PROBE_TIMEOUT_SECONDS
    params.stack_timeout = PROBE_TIMEOUT_SECONDS
    return pika.BlockingConnection(params)


def purge(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """Empty the dead-letter queue of each queue; how many messages each held."""
    purged: dict[str, int] = {}
    connection = _connect(broker_url)
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


def remove(broker_url: str, queue: str, job_ids: Collection[UUID], on_message: Progress | None = None) -> int:
    """Remove the messages of `job_ids` from `<queue>.XQ`; how many were removed.

    Looks at most at the messages the queue held when it started: messages that die
    meanwhile are left alone.
    """
    wanted = {str(job_id) for job_id in job_ids}
    if not wanted:
        return 0
    connection = _connect(broker_url)
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
            job_id = job_id_of(body)
            if job_id in wanted:
                channel.basic_ack(method.delivery_tag)
                removed += 1
                wanted.discard(job_id)
                if not wanted:
                    break
        channel.close()  # the messages taken and not acknowledged go back to the queue
    finally:
        connection.close()
    return removed


def depth(broker_url: str, queue: str) -> int:
    """Messages in `<queue>.XQ` (0 when it was never declared)."""
    connection = _connect(broker_url)
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


def job_id_of(body: bytes) -> str | None:
    """The job id a Dramatiq message of Conveyor carries in its options."""
    try:
        message = orjson.loads(body)
        return str(message["options"]["job_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def remove_quietly(broker_url: str, queue: str, job_ids: Collection[UUID]) -> None:
    """`remove`, for after a replay or discard has committed: the ledger is the truth, so a
    broker that is away only leaves a stale copy behind (a message for a job that is no
    longer dead never runs), and that is logged rather than raised."""
    try:
        remove(broker_url, queue, job_ids)
    except Exception as error:
        log.warning("could not remove stale dead-letter copies", queue=queue, error=repr(error))
