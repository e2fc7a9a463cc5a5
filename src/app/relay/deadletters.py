"""Taking stale copies out of `<queue>.XQ`: the dead runs an operator replayed or discarded.

A replay or discard records the dead run in `stale_dead_letters` in its own transaction.
One pass per queue then removes every recorded copy: the queue's messages are taken without
acknowledgement (consumed, not fetched one round trip at a time), the matching ones are
acknowledged, and closing the channel returns the rest to the queue in their order. A copy
is matched by job id and run, so a job that died again after its replay keeps the copy of
its new death. The relay runs a pass every few seconds when something is recorded, and
`conveyor dlq` runs one right after its own replay or purge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection

import orjson
import pika
import pika.exceptions
from dramatiq.common import xq_name
from sqlalchemy import Engine

from app.ledger import jobs as ledger
from app.ledger.jobs import StaleCopy

Progress = Callable[[int], None]
# Copies taken per pass (each a row lock until the pass commits).
PASS_LIMIT = 10_000
# A pass stops when the queue sends nothing more for this long.
QUIET_SECONDS = 1.0


def clean(engine: Engine, broker_url: str, progress: Progress | None = None) -> int:
    """One pass: remove the recorded stale copies; how many were found and removed."""
    with engine.begin() as conn:
        stale = ledger.take_stale_copies(conn, PASS_LIMIT)
        if not stale:
            return 0
        removed = remove(broker_url, stale, progress)
        ledger.forget_stale_copies(conn, [copy.id for copy in stale])
    return removed


def remove(broker_url: str, stale: Collection[StaleCopy], progress: Progress | None = None) -> int:
    by_queue: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for copy in stale:
        by_queue[copy.queue].add((str(copy.job_id), copy.run))
    params = pika.URLParameters(broker_url)
    params.connection_attempts = 1
    connection = pika.BlockingConnection(params)
    try:
        return sum(_remove_from(connection, queue, wanted, progress) for queue, wanted in by_queue.items())
    finally:
        connection.close()


def _remove_from(
    connection: pika.BlockingConnection, queue: str, wanted: set[tuple[str, int]], progress: Progress | None
) -> int:
    channel = connection.channel()
    try:
        held = channel.queue_declare(xq_name(queue), passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0  # never declared: nothing ever died there
    removed = 0
    channel.basic_qos(prefetch_count=0)  # dead-letter copies are doorbells: small
    messages = channel.consume(xq_name(queue), inactivity_timeout=QUIET_SECONDS)
    for seen, (method, _properties, body) in enumerate(messages, start=1):
        if method is None:
            break
        if progress is not None:
            progress(1)
        run = run_of(body)
        if run in wanted:
            channel.basic_ack(method.delivery_tag)
            wanted.discard(run)
            removed += 1
        if seen >= held or not wanted:
            break
    channel.close()  # the messages taken and not acknowledged go back to the queue
    return removed


def run_of(body: bytes) -> tuple[str, int] | None:
    """The (job id, run) a message of Conveyor carries in its options."""
    try:
        options = orjson.loads(body)["options"]
        return str(options["job_id"]), int(options.get("run", 1))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
