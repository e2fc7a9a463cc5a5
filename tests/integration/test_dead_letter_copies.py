"""The relay's clean-up of stale dead-letter copies: matched by (job id, run), one pass a queue."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from dramatiq import Message
from dramatiq.common import xq_name

from app.ledger.engines import sync_engine
from app.relay import deadletters
from app.transport import rabbitmq
from tests.support import broker
from tests.support.infra import Infra
from tests.support.seed import amqp_channel, declare_queues


def copy_of(infra: Infra, job_id: uuid.UUID, run: int, queue: str = "default") -> None:
    message: Message[Any] = Message(
        queue_name=queue,
        actor_name="app.tasks.example.echo",
        args=(),
        kwargs={},
        options={"job_id": str(job_id), "run": run},
    )
    with amqp_channel(infra) as channel:
        channel.basic_publish(exchange="", routing_key=xq_name(queue), body=message.encode())


def record_stale(infra: Infra, job_id: uuid.UUID, run: int, queue: str = "default") -> None:
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stale_dead_letters (queue, job_id, run) VALUES (%s, %s, %s)", (queue, job_id, run)
        )


def remaining(infra: Infra) -> list[tuple[str, int]]:
    found = []
    with amqp_channel(infra) as channel:
        while True:
            method, _, body = channel.basic_get(xq_name("default"), auto_ack=False)
            if method is None:
                break
            run = rabbitmq.run_of(body)
            assert run is not None
            found.append(run)
    return found


def test_a_pass_removes_only_the_recorded_runs_and_keeps_a_later_death_of_the_same_job(
    clean_ledger: Infra,
) -> None:
    declare_queues(["default"])
    died_twice, other, untouched = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    copy_of(clean_ledger, died_twice, 1)  # its first death, replayed since
    copy_of(clean_ledger, other, 1)
    copy_of(clean_ledger, untouched, 3)
    copy_of(clean_ledger, died_twice, 2)  # it died again after the replay: this copy is current
    record_stale(clean_ledger, died_twice, 1)
    record_stale(clean_ledger, other, 1)
    record_stale(clean_ledger, uuid.uuid4(), 1)  # a copy that expired or was purged meanwhile

    assert deadletters.clean(sync_engine(), clean_ledger.broker_url) == 2
    assert sorted(remaining(clean_ledger)) == sorted([(str(untouched), 3), (str(died_twice), 2)])
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        assert conn.execute("SELECT count(*) FROM stale_dead_letters").fetchone() == (0,), "all forgotten"
    assert deadletters.clean(sync_engine(), clean_ledger.broker_url) == 0, "nothing left to do"
    assert broker.depth(clean_ledger, "default.XQ") == 2
