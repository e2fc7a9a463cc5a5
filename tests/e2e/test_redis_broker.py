"""Redis as the broker (BROKER_URL=redis://…, a db number of this run's own): the real api, relay
and workers deliver, retry into dead (the copy kept, a replay works), survive a SIGKILLed worker
and a Redis that forgot its doorbells, and never run one job twice at once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app import transport
from app.transport import redis as redis_transport
from tests.support import redis_db as dbs
from tests.support.faults import EFFECT_TASK, Ledger
from tests.support.infra import Infra
from tests.support.smtp import SmtpServer
from tests.support.stack import Stack


@pytest.fixture
def redis_stack(clean_ledger: Infra, redis_url: str, redis_db: int, tmp_path: Path) -> Iterator[Stack]:
    """api + relay on Redis; each test starts its own workers."""
    env = {**os.environ, "DIAGNOSTIC_TASKS": "true", "WORKER_SHUTDOWN_SECONDS": "4"}
    with dbs.stack_on(redis_db, tmp_path, env) as running:
        yield running


def effects_ledger(infra: Infra) -> Ledger:
    return Ledger(infra.libpq_url)


def test_an_email_posted_over_http_is_delivered_once_through_redis(
    redis_stack: Stack, smtp_server: SmtpServer
) -> None:
    redis_stack.start_worker()
    ready = redis_stack.wait_ready()
    assert ready["status"] == "ok"
    with redis_stack.client() as client:
        response = client.post(
            "/api/v1/emails", json={"to": "redis@example.com", "subject": "Hi", "body": "x"}
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert redis_stack.wait_for([job_id])[job_id]["state"] == "succeeded"
    time.sleep(0.5)  # a duplicate, if any, would have arrived by now
    assert len(smtp_server.handler.to("redis@example.com")) == 1


def test_a_failing_job_retries_into_dead_its_copy_is_kept_and_a_replay_succeeds(
    redis_stack: Stack, redis_url: str
) -> None:
    redis_stack.start_worker()
    job_id = redis_stack.post_job("app.tasks.example.flaky", {"fail_times": 1, "permanent": True})
    assert redis_stack.wait_for([job_id])[job_id]["state"] == "dead"
    deadline = time.monotonic() + 20
    while transport.dead_depth(redis_url, "default") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert transport.dead_depth(redis_url, "default") == 1, "the dead job's copy is kept"
    with redis_stack.client() as client:
        response = client.post(f"/api/v1/jobs/{job_id}/replay")
    assert response.status_code == 202, response.text
    assert redis_stack.wait_for([job_id])[job_id]["state"] == "succeeded"
    deadline = time.monotonic() + 20
    while transport.dead_depth(redis_url, "default") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert transport.dead_depth(redis_url, "default") == 0, "the replayed run's copy is removed"


def test_a_sigkilled_worker_running_20_jobs_loses_none_and_runs_none_twice_in_effect(
    redis_stack: Stack, clean_ledger: Infra
) -> None:
    ledger = effects_ledger(clean_ledger)
    first = redis_stack.start_worker("worker-killed", threads=20)
    ids = [redis_stack.post_job(EFFECT_TASK, {"sleep_seconds": 3}) for _ in range(20)]
    ledger.wait_until(lambda: ledger.running(ids) == 20, 30, "20 jobs running")
    first.kill()
    redis_stack.start_worker("worker-second", threads=8)
    done = ledger.wait_terminal(ids, timeout=90)
    assert {row["state"] for row in done.values()} == {"succeeded"}
    effects = ledger.effects()
    assert {job: effects[job] for job in ids} == dict.fromkeys(ids, 1)


def test_a_redis_that_forgot_500_published_jobs_gets_them_again_and_all_succeed(
    redis_stack: Stack, clean_ledger: Infra, redis_db: int
) -> None:
    ledger = effects_ledger(clean_ledger)
    ids = [redis_stack.post_job(EFFECT_TASK, {}) for _ in range(500)]
    ledger.wait_until(lambda: ledger.outbox_size() == 0, 60, "every job published")
    connection = redis.Redis.from_url(dbs.url(redis_db))
    assert connection.zcard(redis_transport.keys("default").queue) == 500
    flushed_at = time.monotonic()
    dbs.empty_db(redis_db)  # FLUSHDB of this run's own db only
    redis_stack.start_worker(threads=8)
    done = ledger.wait_terminal(ids, timeout=120)
    print(
        f"\n500 jobs flushed out of Redis: all succeeded {time.monotonic() - flushed_at:.2f}s after the flush"
    )
    assert {row["state"] for row in done.values()} == {"succeeded"}
    effects = ledger.effects()
    assert {job: effects[job] for job in ids} == dict.fromkeys(ids, 1)
    assert "the broker forgot its messages" in redis_stack.processes["relay"].log()


def test_two_workers_never_run_one_job_at_once_even_with_every_doorbell_rung_twice(
    redis_stack: Stack, clean_ledger: Infra, redis_url: str
) -> None:
    ledger = effects_ledger(clean_ledger)
    ids = [redis_stack.post_job(EFFECT_TASK, {"sleep_seconds": 0.05}) for _ in range(200)]
    ledger.wait_until(lambda: ledger.outbox_size() == 0, 60, "every job published")
    doorbells = redis.Redis.from_url(redis_url)
    named = redis_transport.keys("default")
    bodies = doorbells.hgetall(named.msgs)
    with doorbells.pipeline(transaction=True) as pipe:  # every doorbell once more, under another id
        for message_id, body in bodies.items():
            twin = message_id.decode() + "-twin"
            pipe.hset(named.msgs, twin, body)
            pipe.zadd(named.queue, {twin: 1})
        pipe.rpush(named.bell, 1)
        pipe.execute()
    redis_stack.start_worker("worker-a", threads=8)
    redis_stack.start_worker("worker-b", threads=8)
    ledger.wait_terminal(ids, timeout=120)
    effects = ledger.effects()
    assert {job: effects[job] for job in ids} == dict.fromkeys(ids, 1)
    overlapping = ledger.query(
        "SELECT a.job_id FROM job_attempts a JOIN job_attempts b ON a.job_id = b.job_id AND a.ctid < b.ctid"
        " WHERE tstzrange(a.started_at, coalesce(a.finished_at, 'infinity'))"
        " && tstzrange(b.started_at, coalesce(b.finished_at, 'infinity'))"
    )
    assert overlapping == []
    assert all(len(ledger.attempts(job)) == 1 for job in ids[:20])


def test_readiness_says_the_broker_is_down_when_redis_does_not_answer(
    clean_ledger: Infra, tmp_path: Path
) -> None:
    from tests.support.infra import free_port

    env = {**os.environ, "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    running = Stack(workdir=tmp_path, env=env)
    try:
        running.start_api()
        running.wait_api()
        with running.client() as client:
            response = client.get("/health/ready")
        assert response.status_code == 503
        broker = response.json()["checks"]["broker"]
        assert broker["ok"] is False
        assert str(broker["reason"]).startswith("broker unreachable"), broker
    finally:
        running.stop()
