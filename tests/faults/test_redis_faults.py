"""Redis as the broker, cut off: the RabbitMQ suite's outage through the same TCP proxy, on this
run's own Redis db number. Which fault tests run over Redis, and why the others do not:
docs/guarantees.md, "Over Redis"."""

from __future__ import annotations

import os
import pickle
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from app.transport import redis as redis_transport
from tests.faults.conftest import FAULT_ENV
from tests.faults.test_duplicate_faults import _Mkdir
from tests.support import infra as services
from tests.support import redis_db as dbs
from tests.support.faults import EFFECT_TASK, QUEUE, Ledger, job_message, post, post_many
from tests.support.infra import Infra
from tests.support.proxy import TcpProxy
from tests.support.stack import Process, Stack

CUT_SECONDS = 10.0
JOBS = 500


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(dbs.REDIS_HOSTPORT) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def own_ledger(infra: Infra) -> Iterator[Infra]:
    """A database of these tests' own: the fault suite's RabbitMQ stack (`base_stack`, one per
    package) keeps its relay on the run's database, and would publish these tests' jobs to its
    broker."""
    from app.ledger.migrate import upgrade

    own = services.new_infra()
    services.create(own)
    try:
        upgrade(own.database_url)
        with psycopg.connect(infra.libpq_url) as source, psycopg.connect(own.libpq_url) as target:
            for table in ("api_keys", "conveyor_secrets"):  # the run's key works here too
                target.execute(f"TRUNCATE {table} CASCADE")
                with (
                    source.cursor().copy(f"COPY {table} TO STDOUT") as out,
                    target.cursor().copy(f"COPY {table} FROM STDIN") as into,
                ):
                    for data in out:
                        into.write(data)
        yield own
    finally:
        services.drop(own)


@pytest.fixture
def proxied_stack(
    own_ledger: Infra, redis_url: str, redis_db: int, redis_proxy: TcpProxy, tmp_path: Path
) -> Iterator[Stack]:
    """api + relay whose BROKER_URL is this run's Redis db through the proxy; workers per test."""
    Ledger(own_ledger.libpq_url).reset()
    env = dict(os.environ) | FAULT_ENV | {"DATABASE_URL": own_ledger.database_url}
    with dbs.stack_on(redis_db, tmp_path, env, port=redis_proxy.port) as stack:
        yield stack


def outage_lines(process: Process, offset: int) -> dict[str, list[dict[str, object]]]:
    lines = [orjson.loads(line) for line in process.log()[offset:].splitlines() if line.startswith("{")]
    return {
        "loud": [line for line in lines if line.get("level") in {"error", "critical"}],
        "down": [line for line in lines if "unavailable" in str(line.get("event"))],
        "back": [line for line in lines if "available again" in str(line.get("event"))],
    }


def test_500_jobs_posted_while_redis_is_cut_off_for_10_seconds_all_succeed_once(
    proxied_stack: Stack, own_ledger: Infra, redis_proxy: TcpProxy
) -> None:
    ledger = Ledger(own_ledger.libpq_url)
    worker = proxied_stack.start_worker(threads=8)
    relay = proxied_stack.processes["relay"]
    warm = post(proxied_stack.base_url, EFFECT_TASK, {})  # the worker consumes through the proxy
    assert ledger.wait_terminal([warm], timeout=30)[warm]["state"] == "succeeded"
    logged_before = {"worker": len(worker.log()), "relay": len(relay.log())}

    redis_proxy.cut()
    cut_at = time.monotonic()
    try:
        ids = post_many(proxied_stack.base_url, EFFECT_TASK, [{}] * JOBS)  # each a 202
        posted_in = time.monotonic() - cut_at
        time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
        held = ledger.outbox_size()
        states_at_restore = ledger.states(ids)
    finally:
        redis_proxy.restore()
    restored_at = time.monotonic()
    jobs = ledger.wait_terminal(ids, timeout=60)
    settled = time.monotonic() - restored_at
    print(
        f"\nRedis cut off {CUT_SECONDS:.0f}s: {JOBS} jobs posted in {posted_in:.1f}s meanwhile,"
        f" all succeeded {settled:.1f}s after it came back"
    )

    assert posted_in < CUT_SECONDS, "every job must be posted while Redis is cut off"
    assert held == JOBS, "nothing was published while Redis was cut off: the outbox holds it all"
    assert states_at_restore == {"queued": JOBS, "missing": 0}
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": JOBS}
    assert {job["attempts"] for job in jobs.values()} == {1}
    assert ledger.effects("started") == Counter(dict.fromkeys([warm, *ids], 1)), "nothing ran twice"
    assert ledger.effects() == Counter(dict.fromkeys([warm, *ids], 1))
    assert worker.alive(), "the worker reconnects by itself"
    assert relay.alive(), "the relay reconnects by itself"
    for name, process in (("worker", worker), ("relay", relay)):
        seen = outage_lines(process, logged_before[name])
        assert seen["loud"] == [], f"the {name} logged errors for an outage it rides out: {seen['loud'][:3]}"
        assert len(seen["down"]) == 1, f"one warning when Redis goes away, from the {name}: {seen['down']}"
        assert len(seen["back"]) == 1, f"one line when it is back, from the {name}: {seen['back']}"


def test_bytes_that_are_not_a_json_message_go_to_the_dead_letter_set_unread(
    proxied_stack: Stack, own_ledger: Infra, redis_db: int, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    bodies = [
        b"this is not json {",
        orjson.dumps({"queue_name": QUEUE, "actor_name": EFFECT_TASK}).decode().encode("utf-16"),
        pickle.dumps(_Mkdir(marker)),
        b'{"hello": "world"}',
        job_message("not-a-uuid", EFFECT_TASK, {}),
    ]
    garbage = {f"garbage-{n}".encode(): body for n, body in enumerate(bodies)}
    doorbells = redis.Redis(*dbs.REDIS_HOSTPORT, db=redis_db)
    named = redis_transport.keys(QUEUE)
    with doorbells.pipeline(transaction=True) as pipe:  # rung ahead of every job (the lowest score)
        pipe.hset(named.msgs, mapping=garbage)  # type: ignore[arg-type]
        pipe.zadd(named.queue, dict.fromkeys(garbage, 1))
        pipe.rpush(named.bell, 1)
        pipe.execute()
    worker = proxied_stack.start_worker(threads=2)
    job_id = post(proxied_stack.base_url, EFFECT_TASK, {})
    ledger = Ledger(own_ledger.libpq_url)

    assert ledger.wait_terminal([job_id], timeout=30)[job_id]["state"] == "succeeded"
    ledger.wait_until(
        lambda: doorbells.hlen(named.xq_msgs) >= len(garbage), timeout=30, what="the garbage dead-lettered"
    )
    assert doorbells.hgetall(named.xq_msgs) == garbage, "set aside as they came, unchanged"
    assert doorbells.zcard(named.xq) == len(garbage)
    assert doorbells.hlen(named.msgs) == doorbells.zcard(named.queue) == 0, "none rings again"
    assert not marker.exists(), "the pickle was never loaded"
    assert worker.alive()
    assert worker.log().count('"worker started"') == 1, "the worker process never restarted"
