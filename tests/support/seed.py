"""Rows and messages written straight into the real ledger and broker, for the operating tests.

Jobs are inserted in the state a test needs (dead, with attempts) instead of being run to
it; dead-letter copies are published to `<queue>.XQ` as a worker's nack would leave them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import orjson
import pika
import psycopg
from dramatiq import Message
from dramatiq.common import xq_name

from tests.support.infra import Infra


def insert_job(
    infra: Infra,
    *,
    task: str = "app.tasks.example.echo",
    queue: str = "default",
    state: str = "dead",
    payload: dict[str, Any] | None = None,
    attempts: int = 0,
    max_attempts: int = 5,
    last_error: str | None = None,
    available_seconds_ago: float = 0.0,
    published: bool = True,
    errors: Sequence[str] = (),
) -> UUID:
    """One job; `errors` adds that many failed attempts (run 1) to its history."""
    job_id = uuid.uuid4()
    finished = state in {"succeeded", "dead", "cancelled"}
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO jobs (id, task, queue, payload, state, attempts, max_attempts, last_error,
                              available_at, published_at, started_at, finished_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now() - make_interval(secs => %s),
                    CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END,
                    CASE WHEN %s THEN now() END)
            """,
            (
                job_id,
                task,
                queue,
                orjson.dumps(payload or {"message": "hi"}).decode(),
                state,
                attempts or len(errors),
                max_attempts,
                last_error or (errors[-1] if errors else None),
                available_seconds_ago,
                published,
                attempts > 0 or bool(errors),
                finished,
            ),
        )
        for number, error in enumerate(errors, start=1):
            conn.execute(
                """
                INSERT INTO job_attempts (job_id, run, attempt, worker_id, finished_at, outcome, error,
                                          duration_seconds)
                VALUES (%s, 1, %s, 'test-host:1:abc', now(), 'failed', %s, 0.01)
                """,
                (job_id, number, error),
            )
    return job_id


def job_row(infra: Infra, job_id: UUID) -> dict[str, Any] | None:
    with psycopg.connect(infra.libpq_url) as conn:
        cursor = conn.execute("SELECT state, run, attempts FROM jobs WHERE id = %s", (job_id,))
        row = cursor.fetchone()
    return None if row is None else {"state": row[0], "run": row[1], "attempts": row[2]}


def insert_worker(infra: Infra, *, host: str, seconds_ago: float = 0.0, stopped: bool = False) -> str:
    worker_id = f"{host}:{uuid.uuid4().int % 100000}:{uuid.uuid4().hex[:6]}"
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO workers (id, host, pid, queues, last_seen, stopped_at)
            VALUES (%s, %s, 4242, '["default"]', now() - make_interval(secs => %s),
                    CASE WHEN %s THEN now() END)
            """,
            (worker_id, host, seconds_ago, stopped),
        )
    return worker_id


def insert_relay(infra: Infra, *, host: str, seconds_ago: float = 0.0, stopped: bool = False) -> str:
    relay_id = f"{host}:{uuid.uuid4().int % 100000}:{uuid.uuid4().hex[:6]}"
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO relays (id, host, pid, last_seen, stopped_at)
            VALUES (%s, %s, 4243, now() - make_interval(secs => %s), CASE WHEN %s THEN now() END)
            """,
            (relay_id, host, seconds_ago, stopped),
        )
    return relay_id


def declare_queues(queues: Sequence[str] = ("default", "email", "exports")) -> None:
    """Declare the queues as a worker would (same arguments), through the application's broker."""
    from app.worker import broker

    try:
        for queue in queues:
            broker.declare_queue(queue, ensure=True)
    finally:
        del broker.connection  # closes this thread's channel and connection, and forgets them


@contextmanager
def amqp_channel(infra: Infra) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(infra.broker_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


def publish_dead_copy(infra: Infra, job_id: UUID, queue: str = "default") -> None:
    message: Message[None] = Message(
        queue_name=queue,
        actor_name="app.tasks.example.echo",
        args=(),
        kwargs={"message": "hi"},
        options={"job_id": str(job_id), "run": 1},
    )
    with amqp_channel(infra) as channel:
        channel.basic_publish(exchange="", routing_key=xq_name(queue), body=message.encode())


def dead_copies(infra: Infra, queue: str = "default") -> list[str]:
    """The job ids in `<queue>.XQ`, in order, leaving the messages where they are."""
    ids: list[str] = []
    with amqp_channel(infra) as channel:
        while True:
            method, _, body = channel.basic_get(xq_name(queue), auto_ack=False)
            if method is None:
                break
            ids.append(orjson.loads(body)["options"]["job_id"])
    return ids
