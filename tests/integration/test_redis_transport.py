"""The transport on Redis (BROKER_URL=redis://…): publishing, depths, dead-letter copies, a
Redis that forgot, and readiness; against a db number of this run's own on the real Redis."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis
from dramatiq import Message

from app import transport
from app.operate import health
from app.relay.outbox import Relay, _listen
from app.settings import Settings, get_settings
from app.transport import redis as redis_transport
from tests.ledger.rows import given
from tests.support.infra import Infra, free_port


def doorbell(queue: str = "default", run: int = 1) -> Message[None]:
    return Message(
        queue_name=queue,
        actor_name="app.tasks.example.echo",
        args=(),
        kwargs={},
        options={"job_id": str(uuid.uuid4()), "run": run},
    )


def test_a_redis_url_gets_the_redis_publisher_and_a_published_batch_is_counted_per_queue(
    redis_url: str,
) -> None:
    assert transport.kind(redis_url) == "redis"
    assert transport.kind("amqp://guest:guest@127.0.0.1:5672/") == "rabbitmq"
    publisher = transport.publisher(redis_url)
    assert isinstance(publisher, redis_transport.RedisPublisher)
    publisher.publish([(doorbell(), 0), (doorbell(), 5), (doorbell("email"), 0)])
    publisher.close()
    assert transport.depths(redis_url, ["default", "email", "exports"]) == {
        "default": 2,
        "email": 1,
        "exports": 0,
    }


def test_doorbells_are_scored_highest_priority_first_then_oldest(redis_url: str) -> None:
    publisher = redis_transport.RedisPublisher(redis_url)
    low, high, later_high = doorbell(), doorbell(), doorbell()
    publisher.publish([(low, 0), (high, 9)])
    time.sleep(0.002)  # one millisecond apart at least: ties within one go by id
    publisher.publish([(later_high, 9)])
    order = redis_transport.client(redis_url).zrange(redis_transport.keys("default").queue, 0, -1)
    assert [m.decode() for m in order] == [high.message_id, later_high.message_id, low.message_id]


def test_dead_letter_copies_are_kept_counted_removed_by_run_and_purged(redis_url: str) -> None:
    publisher = redis_transport.RedisPublisher(redis_url)
    first, second, third = doorbell(), doorbell(run=2), doorbell()
    publisher.publish([(first, 0), (second, 0), (third, 0)], dead=True)
    assert transport.dead_depth(redis_url, "default") == 3
    assert transport.depths(redis_url, ["default"]) == {"default": 0}, "dead copies ring no worker"
    wanted = {"default": {(first.options["job_id"], 1), (second.options["job_id"], 2), ("other", 1)}}
    assert transport.remove_dead_copies(redis_url, wanted) == 2
    assert transport.dead_depth(redis_url, "default") == 1
    assert transport.purge_dead(redis_url, ["default", "email"]) == {"default": 1, "email": 0}
    assert transport.dead_depth(redis_url, "default") == 0


def test_a_redis_that_forgot_is_noticed_once_and_every_relay_gets_the_first_cutoff(redis_url: str) -> None:
    one, other = redis_transport.RedisPublisher(redis_url), redis_transport.RedisPublisher(redis_url)
    first = datetime.now(UTC)
    assert one.forgotten(first) == first, "an empty Redis never saw our doorbells"
    assert one.forgotten(first + timedelta(seconds=1)) is None
    assert other.forgotten(first + timedelta(seconds=2)) is None, "another relay sees the same run"
    redis_transport.client(redis_url).delete(redis_transport.EPOCH_KEY)  # as FLUSHDB would
    later = first + timedelta(seconds=3)
    assert one.forgotten(later) == later
    assert other.forgotten(later + timedelta(seconds=1)) is None


def test_a_publish_to_an_unreachable_redis_fails_the_batch(infra: object) -> None:
    from app.errors import PublishFailed

    publisher = redis_transport.RedisPublisher(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    try:
        publisher.publish([(doorbell(), 0)])
    except PublishFailed:
        return
    raise AssertionError("the batch must fail")


def test_readiness_counts_redis_queues_and_says_when_redis_is_unreachable(redis_url: str) -> None:
    check = health.check_broker(Settings(broker_url=redis_url), ["default"])
    assert check.ok is True, check
    assert check.details == {"broker": "redis", "queues": {"default": 0}}
    down = health.check_broker(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"), ["default"])
    assert down.ok is False
    assert down.reason is not None
    assert down.reason.startswith("broker unreachable"), down.reason


def test_probes_make_clients_that_never_retry(redis_url: str) -> None:
    connection = redis_transport.client(redis_url)
    assert connection.get_retry() is None or connection.get_retry()._retries == 0  # type: ignore[union-attr]
    assert isinstance(connection, redis.Redis)


def test_a_consumer_takes_only_what_fits_and_what_it_holds_goes_back_on_give_back_or_silence(
    redis_url: str,
) -> None:
    publisher = redis_transport.RedisPublisher(redis_url)
    bells = [doorbell() for _ in range(5)]
    for bell in bells:  # a millisecond apart: the order of age
        publisher.publish([(bell, 0)])
        time.sleep(0.002)
    first = redis_transport.Doorbells(redis_url, "default", "host:1:a:default", wait=0.1)
    taken = first.take(2, wait=0.1)
    assert [redis_id for redis_id, _ in taken] == [bell.message_id for bell in bells[:2]], "oldest first"
    assert Message.decode(taken[0][1]).options["job_id"] == bells[0].options["job_id"]
    first.ack([taken[0][0]])
    assert first.give_back([taken[1][0]]) == 1
    assert transport.depths(redis_url, ["default"]) == {"default": 4}
    assert [redis_id for redis_id, _ in first.take(1, wait=0.1)] == [bells[1].message_id], "back in its place"
    first.dead([bells[1].message_id])
    assert transport.dead_depth(redis_url, "default") == 1
    held = first.take(3, wait=0.1)
    assert len(held) == 3
    assert transport.depths(redis_url, ["default"]) == {"default": 0}
    assert publisher.requeue_orphans(timeout=60.0) == 0, "a consumer that beat just now is alive"
    time.sleep(0.05)
    assert publisher.requeue_orphans(timeout=0.01) == 3, "a silent consumer's doorbells go back"
    assert transport.depths(redis_url, ["default"]) == {"default": 3}
    first.ack([redis_id for redis_id, _ in held])  # claimed meanwhile: acknowledged, not rung again
    assert transport.depths(redis_url, ["default"]) == {"default": 3}, "the queue keeps its copies"
    second = redis_transport.Doorbells(redis_url, "default", "host:2:b:default", wait=0.1)
    assert second.take(10, wait=0.1) == [], "an acknowledged doorbell's body is gone: nothing to ring"
    second.close()
    first.close()


def test_an_idle_consumer_waits_on_the_bell_and_wakes_when_a_batch_is_published(redis_url: str) -> None:
    import threading

    bells = redis_transport.Doorbells(redis_url, "email", "host:1:a:email", wait=5.0)
    got: list[list[tuple[str, bytes]]] = []
    waiting = threading.Thread(target=lambda: got.append(bells.take(4, wait=5.0)))
    waiting.start()
    time.sleep(0.2)
    redis_transport.RedisPublisher(redis_url).publish([(doorbell("email"), 0)])
    waiting.join(10)
    assert len(got) == 1
    assert len(got[0]) == 1
    bells.close()


def test_a_restarted_redis_is_noticed_even_when_it_kept_the_marker_on_disk(tmp_path: Path) -> None:
    """A private redis-server on a free port (the shared one is never restarted): it saves its
    data, stops and starts again from the file, so the marker is back but names the old run."""
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp_path),
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
                return server
            except redis.ConnectionError:
                time.sleep(0.05)
        server.kill()
        raise AssertionError("the private redis-server did not start")

    url = f"redis://127.0.0.1:{port}/0"
    server = start()
    try:
        publisher = redis_transport.RedisPublisher(url)
        first = datetime.now(UTC)
        assert publisher.forgotten(first) == first
        assert publisher.forgotten(first) is None
        redis.Redis(port=port).shutdown(save=True)  # dump.rdb holds the marker
        server.wait(10)
        server = start()
        assert redis.Redis(port=port).exists(redis_transport.EPOCH_KEY), "the marker came back from disk"
        publisher.close()
        later = first + timedelta(seconds=5)
        assert publisher.forgotten(later) == later, "another run of Redis: what it held may be older"
        publisher.close()
    finally:
        server.kill()
        server.wait(10)


def test_a_relay_started_on_a_redis_it_never_saw_publishes_its_backlog_once(
    clean_ledger: Infra, redis_url: str
) -> None:
    """Its first look at the Redis (which marks it) comes before its first publish: after, the
    backlog it had just published counted as forgotten and went out twice."""
    settings = get_settings().model_copy(update={"broker_url": redis_url})
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        ids = [given(conn, "queued", due_in=-1) for _ in range(30)]
    relay, listener = Relay(settings), _listen(settings)
    try:
        relay.work(listener)
        relay.work(listener)
        relay.sweep()
        relay.work(listener)
    finally:
        listener.close()
        relay.publisher.close()
        relay._forget_ledger()
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        unpublished = conn.execute(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND published_at IS NULL", (ids,)
        ).fetchone()
    assert unpublished == (0,)
    assert redis.Redis.from_url(redis_url).exists(redis_transport.EPOCH_KEY), "the relay marked the Redis"
    assert transport.depths(redis_url, ["default"]) == {"default": 30}, "each job's doorbell once"
