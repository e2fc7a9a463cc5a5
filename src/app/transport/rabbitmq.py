"""RabbitMQ: node lists, the queues Conveyor and Dramatiq declare, depths, dead-letter copies.

`BROKER_URL` may list several nodes separated by `;` (`amqp://…@a:5672/;amqp://…@b:5672/`, as
Celery and Dramatiq write it). Every connection made here gets the whole list: pika tries the
nodes in order, and a process that lost its connection makes a new one the same way, so it
lands on the first node that answers. pika gives up on the whole list at the first name that
does not resolve (a stopped compose service leaves the network's DNS), so every connection is
made over `resolvable(nodes)`.

`BROKER_QUEUE_TYPE` decides the type of every queue: `classic` queues carry `x-max-priority`,
`quorum` queues (replicated over the cluster) carry `x-queue-type: quorum` and no priority,
which they refuse. The worker (through its Dramatiq broker) and the relay declare with the
same arguments, from `queue_arguments` and `dead_letter_arguments`. A queue that exists with
another type is refused (QueueTypeMismatch); `inspect` finds such queues without creating any,
and `redeclare` deletes one and declares it with the wanted type (`conveyor queues migrate`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.common import dq_name, xq_name
from pika.adapters.blocking_connection import BlockingChannel

from app.errors import QueueTypeMismatch
from app.jobs.registry import MAX_PRIORITY
from app.settings import get_settings

# Container healthchecks and Kubernetes probes give a probe about 5 s; answer well before.
PROBE_TIMEOUT_SECONDS = 3.0
# A pass over a dead-letter queue stops when the queue sends nothing more for this long.
QUIET_SECONDS = 1.0

Progress = Callable[[int], None]


def node_urls(broker_url: str) -> list[str]:
    """The nodes of a `;`-separated BROKER_URL, in order (blank parts ignored)."""
    urls = [part.strip() for part in broker_url.split(";") if part.strip()]
    if not urls:
        raise ValueError("BROKER_URL names no RabbitMQ node")
    return urls


def node_parameters(broker_url: str, **options: Any) -> list[pika.URLParameters]:
    """One pika parameter set per node, each with `options` (heartbeat, socket_timeout, ...)."""
    nodes = []
    for url in node_urls(broker_url):
        parameters = pika.URLParameters(url)
        for name, value in options.items():
            setattr(parameters, name, value)
        nodes.append(parameters)
    return nodes


def resolvable(nodes: Sequence[pika.URLParameters]) -> list[pika.URLParameters]:
    """The nodes whose host name resolves now, in order; all of them when none does (the
    connection then fails with the resolver's own error)."""
    found = []
    for node in nodes:
        try:
            socket.getaddrinfo(node.host, node.port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        found.append(node)
    return found or list(nodes)


def connect(broker_url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> pika.BlockingConnection:
    """A connection to the first node that answers, each tried once within `timeout` seconds."""
    return pika.BlockingConnection(
        resolvable(
            node_parameters(
                broker_url,
                connection_attempts=1,
                socket_timeout=timeout,
                stack_timeout=timeout,
                blocked_connection_timeout=timeout,
            )
        )
    )


# -- queues ---------------------------------------------------------------------------------


def queue_type(setting: str | None = None) -> str:
    return setting or get_settings().broker_queue_type


def queue_arguments(queue: str, kind: str | None = None) -> dict[str, Any]:
    """The arguments of `<queue>` and `<queue>.DQ`: dead letters go to `<queue>.XQ`; priorities
    on classic queues only (a quorum queue refuses `x-max-priority`)."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(queue)}
    if queue_type(kind) == "quorum":
        arguments["x-queue-type"] = "quorum"
    else:
        arguments["x-max-priority"] = MAX_PRIORITY
    return arguments


def dead_letter_arguments(kind: str | None = None) -> dict[str, Any]:
    """`<queue>.XQ` keeps its messages for Dramatiq's dead message TTL (7 days by default)."""
    arguments: dict[str, Any] = {"x-message-ttl": DEAD_MESSAGE_TTL}
    if queue_type(kind) == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


def declare_one(channel: BlockingChannel, name: str, arguments: dict[str, Any]) -> Any:
    """queue.declare, a refusal over the queue's type turned into QueueTypeMismatch."""
    try:
        return channel.queue_declare(queue=name, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as error:
        text = str(error.reply_text)
        if error.reply_code == 406 and any(arg in text for arg in ("x-queue-type", "x-max-priority")):
            raise QueueTypeMismatch(name, str(arguments.get("x-queue-type", "classic")), text) from None
        raise


def declare(channel: BlockingChannel, queue: str, kind: str | None = None) -> None:
    """Declare `<queue>`, `<queue>.DQ` and `<queue>.XQ` as a Dramatiq worker does."""
    declare_one(channel, queue, queue_arguments(queue, kind))
    declare_one(channel, dq_name(queue), queue_arguments(queue, kind))
    declare_one(channel, xq_name(queue), dead_letter_arguments(kind))


def ensure_queues(broker_url: str, queues: Iterable[str], kind: str | None = None) -> None:
    """Declare every queue (and its .DQ and .XQ) on the first node that answers."""
    connection = connect(broker_url)
    try:
        for queue in sorted(set(queues)):
            declare(connection.channel(), queue, kind)
    finally:
        if connection.is_open:
            connection.close()


def family(queue: str, kind: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """`<queue>`, `<queue>.DQ` and `<queue>.XQ`, each with the arguments BROKER_QUEUE_TYPE gives it."""
    return [
        (queue, queue_arguments(queue, kind)),
        (dq_name(queue), queue_arguments(queue, kind)),
        (xq_name(queue), dead_letter_arguments(kind)),
    ]


@dataclass(frozen=True)
class QueueState:
    """One queue of the broker as `BROKER_QUEUE_TYPE` sees it: absent, of the wanted type, or of
    another (`mismatch`), with its messages and consumers."""

    queue: str  # the queue it belongs to (`default` for `default.XQ`)
    name: str
    exists: bool
    messages: int = 0
    consumers: int = 0
    mismatch: QueueTypeMismatch | None = None

    def has(self, wanted: str) -> str | None:
        """The queue's type (None when it is absent)."""
        if not self.exists:
            return None
        return self.mismatch.has if self.mismatch else wanted


def inspect(broker_url: str, queues: Iterable[str], kind: str | None = None) -> list[QueueState]:
    """Each queue's family (see `family`) as it is: a passive declare says whether it exists and
    what it holds, then a declare with the wanted arguments, which creates nothing over a queue
    that exists, says whether its type is the wanted one. Raises when no node can be reached."""
    states: list[QueueState] = []
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        for queue in sorted(set(queues)):
            for name, arguments in family(queue, kind):
                try:
                    found = channel.queue_declare(name, passive=True).method
                except pika.exceptions.ChannelClosedByBroker:  # 404: it was never declared
                    states.append(QueueState(queue, name, exists=False))
                    channel = connection.channel()
                    continue
                mismatch = None
                try:
                    declare_one(channel, name, arguments)
                except QueueTypeMismatch as error:
                    mismatch = error
                    channel = connection.channel()
                states.append(
                    QueueState(queue, name, True, found.message_count, found.consumer_count, mismatch)
                )
    finally:
        if connection.is_open:
            connection.close()
    return states


def type_mismatch(
    broker_url: str, queues: Iterable[str], kind: str | None = None
) -> QueueTypeMismatch | None:
    """One error naming every queue whose type is not BROKER_QUEUE_TYPE's; None when none is."""
    refused = [state.mismatch for state in inspect(broker_url, queues, kind) if state.mismatch]
    if not refused:
        return None
    first = refused[0]
    return QueueTypeMismatch(
        first.queue, first.wanted, first.reply, first.has, [m.queue for m in refused[1:]]
    )


def redeclare(broker_url: str, name: str, arguments: dict[str, Any], *, delete: bool = True) -> int:
    """Delete a queue (unless not `delete`) and declare it again with `arguments` (a type it did
    not have); how many messages went with it."""
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        dropped = int(channel.queue_delete(name).method.message_count) if delete else 0
        declare_one(channel, name, arguments)
        return dropped
    finally:
        if connection.is_open:
            connection.close()


# -- depths ---------------------------------------------------------------------------------


def depths(broker_url: str, names: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None when it is not declared), by passive declares.

    Raises when no node can be reached.
    """
    found: dict[str, int | None] = {}
    connection = connect(broker_url)
    try:
        channel = connection.channel()
        for name in names:
            try:
                found[name] = channel.queue_declare(name, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                found[name] = None  # the broker closes a channel that asks for a missing queue
                channel = connection.channel()
        channel.close()
    finally:
        connection.close()
    return found


# -- dead-letter copies ---------------------------------------------------------------------


def purge_dead(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
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


def dead_depth(broker_url: str, queue: str) -> int:
    """Messages in `<queue>.XQ` (0 when it was never declared)."""
    return depths(broker_url, [xq_name(queue)])[xq_name(queue)] or 0


def remove_dead_copies(
    broker_url: str, wanted: dict[str, set[tuple[str, int]]], progress: Progress | None = None
) -> int:
    """Take the copies of the given (job id, run)s out of each `<queue>.XQ`; how many were found.

    The queue's messages are taken without acknowledgement (consumed, not fetched one round trip
    at a time), the matching ones are acknowledged, and closing the channel returns the rest to
    the queue in their order.
    """
    connection = pika.BlockingConnection(resolvable(node_parameters(broker_url, connection_attempts=1)))
    try:
        return sum(_remove_from(connection, queue, set(runs), progress) for queue, runs in wanted.items())
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
