"""Redis: doorbells in one sorted set per queue, published in MULTI/EXEC, taken by a Lua script.

Keys of a queue share a hash tag: `conveyor:{q}` (ZSET id -> score, the highest priority then
the oldest first), `{q}.msgs` (HASH id -> body), `{q}.held.<consumer>` (what a consumer took
and has not acknowledged yet), `{q}.consumers` (ZSET consumer -> last beat), `{q}.bell` (a
LIST of wake-ups a waiting consumer pops), `{q}.XQ` and `{q}.XQ.msgs` (dead-letter copies).
`conveyor:queues` names every queue published to, and `conveyor:epoch` says which Redis run
the relay last saw: when it is missing or names another run, Redis forgot its doorbells.

Redis acknowledges a MULTI/EXEC once every command is applied in memory, nothing more: the
ledger covers the rest (a Redis that forgot is noticed by the relay, which publishes again
every job not yet claimed; what a silent consumer took goes back after its timeout).
Every client is made with retries off and explicit timeouts: redis-py retries 10 times by
default, which held a probe of a frozen server for 37 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.errors import PublishFailed
from app.jobs.registry import MAX_PRIORITY
from app.transport.rabbitmq import PROBE_TIMEOUT_SECONDS, Progress, run_of

PREFIX = "conveyor:"
QUEUES_KEY = f"{PREFIX}queues"
EPOCH_KEY = f"{PREFIX}epoch"
PUBLISH_TIMEOUT_SECONDS = 30.0
BELL_LENGTH = 64  # wake-ups kept at most: a waiting consumer needs one
PRIORITY_SPAN = 10**13  # milliseconds: scores stay exact in a double for centuries
SCAN_COUNT = 500

# Set the marker unless it names this Redis run already; the marker's value either way.
_EPOCH_SCRIPT = """
local current = redis.call("get", KEYS[1])
if current and string.match(current, "^(%S+)") == ARGV[1] then return {0, current} end
local value = ARGV[1] .. " " .. ARGV[2]
redis.call("set", KEYS[1], value)
return {1, value}
"""


def client(broker_url: str, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> redis.Redis:
    """A client that tries once and waits at most `timeout` seconds for a connection or a reply."""
    return redis.Redis.from_url(
        broker_url,
        socket_connect_timeout=min(timeout, PROBE_TIMEOUT_SECONDS),
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


@dataclass(frozen=True)
class Keys:
    queue: str
    msgs: str
    consumers: str
    bell: str
    xq: str
    xq_msgs: str
    held_prefix: str

    def held(self, consumer: str) -> str:
        return self.held_prefix + consumer

    def script_keys(self, consumer: str = "") -> list[str]:
        return [self.queue, self.msgs, self.held(consumer), self.consumers, self.bell, self.xq, self.xq_msgs]


@cache
def keys(queue: str) -> Keys:
    base = f"{PREFIX}{{{queue}}}"
    return Keys(
        queue=base,
        msgs=f"{base}.msgs",
        consumers=f"{base}.consumers",
        bell=f"{base}.bell",
        xq=f"{base}.XQ",
        xq_msgs=f"{base}.XQ.msgs",
        held_prefix=f"{base}.held.",
    )


@cache
def script_text() -> str:
    return resources.files("app.transport").joinpath("doorbells.lua").read_text()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def now_ms() -> int:
    return int(time.time() * 1000)


def score(priority: int, at_ms: int) -> int:
    """Higher priority first, then older first: ZPOPMIN takes the lowest score."""
    return (MAX_PRIORITY - max(0, min(priority, MAX_PRIORITY))) * PRIORITY_SPAN + at_ms


class RedisPublisher:
    """Publishes each batch in one MULTI/EXEC: per queue one HSET of bodies, one ZADD, a wake-up."""

    def __init__(self, broker_url: str, timeout: float = PUBLISH_TIMEOUT_SECONDS) -> None:
        self.broker_url = broker_url
        self.timeout = timeout
        self._client: redis.Redis | None = None

    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            self._client = client(self.broker_url, timeout=self.timeout)
        return self._client

    def publish(self, messages: Sequence[tuple[Message[None], int]], *, dead: bool = False) -> None:
        if not messages:
            return
        at = now_ms()
        bodies: dict[str, dict[str, bytes]] = {}
        scores: dict[str, dict[str, int]] = {}
        for message, priority in messages:
            queue = message.queue_name
            bodies.setdefault(queue, {})[message.message_id] = message.encode()
            scores.setdefault(queue, {})[message.message_id] = at if dead else score(priority, at)
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(QUEUES_KEY, *bodies)
                for queue, mapping in bodies.items():
                    named = keys(queue)
                    if dead:
                        pipe.hset(named.xq_msgs, mapping=mapping)  # type: ignore[arg-type]
                        pipe.zadd(named.xq, scores[queue])
                    else:
                        pipe.hset(named.msgs, mapping=mapping)  # type: ignore[arg-type]
                        pipe.zadd(named.queue, scores[queue])
                        pipe.rpush(named.bell, 1)
                        pipe.ltrim(named.bell, 0, BELL_LENGTH - 1)
                pipe.execute()
        except redis.RedisError as error:
            self.close()
            raise PublishFailed(f"Redis did not take the batch: {error!r}") from error

    def forgotten(self, cutoff: datetime) -> datetime | None:
        """The cutoff to publish again with when Redis forgot its doorbells since the last look
        (flushed, restarted without them, failed over), else None. Every relay that notices one
        loss gets the cutoff of the first that did."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(EPOCH_KEY)
            pipe.info("server")
            marker, info = pipe.execute()
        run_id = str(info["run_id"])
        if marker is not None and marker.decode().split(" ", 1)[0] == run_id:
            return None
        changed, value = self.redis.eval(_EPOCH_SCRIPT, 1, EPOCH_KEY, run_id, cutoff.isoformat())
        return datetime.fromisoformat(value.decode().split(" ", 1)[1]) if changed or marker is None else None

    def requeue_orphans(self, timeout: float) -> int:
        """Give back what consumers silent for `timeout` seconds took; expire old dead copies."""
        queues = sorted(_text(q) for q in self.redis.smembers(QUEUES_KEY))
        back = 0
        for queue in queues:
            named = keys(queue)
            back += int(
                self.redis.eval(
                    script_text(),
                    7,
                    *named.script_keys(),
                    "orphans",
                    now_ms(),
                    "",
                    int(timeout * 1000),
                    named.held_prefix,
                    DEAD_MESSAGE_TTL,
                )
            )
        return back

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None


class Doorbells:
    """One consumer's side of one queue: take what fits (waiting on the bell when nothing waits),
    acknowledge at the claim, give back, bury what no worker can run, beat."""

    def __init__(self, broker_url: str, queue: str, consumer: str, wait: float) -> None:
        # A blocking pop waits `wait` seconds: the socket waits longer, so it never cuts one.
        self.redis = client(broker_url, timeout=wait + 5.0)
        self.keys = keys(queue)
        self.consumer = consumer
        self._keys = self.keys.script_keys(consumer)
        self._script = self.redis.register_script(script_text())  # EVALSHA, EVAL once forgotten

    def _call(self, command: str, *args: str | int) -> Any:
        return self._script(keys=self._keys, args=[command, now_ms(), self.consumer, *args])

    def take(self, room: int, wait: float) -> list[tuple[str, bytes]]:
        """Up to `room` doorbells, highest priority then oldest; waits up to `wait` for one."""
        taken = self._take(room)
        if not taken and wait > 0 and self.redis.blpop([self.keys.bell], timeout=wait) is not None:
            taken = self._take(room)
        return taken

    def _take(self, room: int) -> list[tuple[str, bytes]]:
        flat = self._call("take", room)
        return [(_text(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    def ack(self, ids: Sequence[str]) -> None:
        if ids:
            self._call("ack", *ids)

    def give_back(self, ids: Sequence[str] = ()) -> int:
        """Back to the queue in their place; every one held when `ids` is empty."""
        return int(self._call("give_back", *ids))

    def dead(self, ids: Sequence[str]) -> None:
        if ids:
            self._call("dead", *ids)

    def beat(self) -> None:
        self._call("beat")

    def close(self) -> None:
        """Give back what is held and leave."""
        try:
            self.give_back()
            self.redis.zrem(self.keys.consumers, self.consumer)
        finally:
            self.redis.close()


# -- depths and dead-letter copies ----------------------------------------------------------


def depths(broker_url: str, names: Sequence[str]) -> dict[str, int | None]:
    """Doorbells waiting in each queue (`<q>.XQ`: dead copies); Redis declares no queue, so never None.
    Raises when Redis does not answer within PROBE_TIMEOUT_SECONDS."""
    connection = client(broker_url)
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.ping()
            for name in names:
                queue, _, suffix = name.rpartition(".")
                pipe.zcard(keys(queue).xq if suffix == "XQ" and queue else keys(name).queue)
            replies = pipe.execute()
    finally:
        connection.close()
    return {name: int(count) for name, count in zip(names, replies[1:], strict=True)}


def ensure_queues(broker_url: str, queues: Iterable[str]) -> None:
    """Redis declares nothing: the queues are only named, for the sweep to visit."""
    connection = client(broker_url)
    try:
        if names := sorted(set(queues)):
            connection.sadd(QUEUES_KEY, *names)
    finally:
        connection.close()


def purge_dead(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    purged: dict[str, int] = {}
    connection = client(broker_url)
    try:
        for queue in sorted(set(queues)):
            named = keys(queue)
            with connection.pipeline(transaction=True) as pipe:
                pipe.zcard(named.xq)
                pipe.delete(named.xq, named.xq_msgs)
                count, _ = pipe.execute()
            purged[queue] = int(count)
    finally:
        connection.close()
    return purged


def dead_depth(broker_url: str, queue: str) -> int:
    connection = client(broker_url)
    try:
        return int(connection.zcard(keys(queue).xq))
    finally:
        connection.close()


def remove_dead_copies(
    broker_url: str, wanted: dict[str, set[tuple[str, int]]], progress: Progress | None = None
) -> int:
    """Take the copies of the given (job id, run)s out of each queue's dead-letter set."""
    connection = client(broker_url, timeout=PUBLISH_TIMEOUT_SECONDS)
    removed = 0
    try:
        for queue, runs in wanted.items():
            named, left = keys(queue), set(runs)
            for message_id, body in connection.hscan_iter(named.xq_msgs, count=SCAN_COUNT):
                if progress is not None:
                    progress(1)
                run = run_of(body)
                if run is not None and run in left:
                    left.discard(run)
                    with connection.pipeline(transaction=True) as pipe:
                        pipe.zrem(named.xq, message_id)
                        pipe.hdel(named.xq_msgs, message_id)
                        pipe.execute()
                    removed += 1
                if not left:
                    break
    finally:
        connection.close()
    return removed
