"""Jobs put straight into a state with plain SQL, and read back, for the ledger's specifications."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg

from app.ledger.jobs import Token

WORKER = "host:1:abcdef"


def given(
    conn: psycopg.Connection[Any],
    state: str,
    *,
    attempts: int = 0,
    max_attempts: int = 3,
    run: int = 1,
    worker_id: str | None = None,
    lease_in: float | None = None,
    due_in: float = 0.0,
    published: bool = False,
    task: str = "app.tasks.example.echo",
    queue: str = "default",
) -> UUID:
    """A job in `state`; a running one holds a lease for `lease_in` seconds (negative: expired)
    and has an open attempt row, as a claim would have left it."""
    job_id = uuid.uuid4()
    running = state == "running"
    conn.execute(
        """
        INSERT INTO jobs (id, task, queue, payload, state, run, attempts, max_attempts, worker_id,
                          lease_expires_at, available_at, published_at, started_at, finished_at)
        VALUES (%(id)s, %(task)s, %(queue)s, '{"message": "hi"}', %(state)s, %(run)s, %(attempts)s,
                %(max_attempts)s, %(worker)s,
                CASE WHEN %(lease)s::float8 IS NULL THEN NULL
                     ELSE now() + make_interval(secs => %(lease)s::float8) END,
                now() + make_interval(secs => %(due)s), CASE WHEN %(published)s THEN now() END,
                CASE WHEN %(attempts)s > 0 THEN now() END,
                CASE WHEN %(state)s IN ('succeeded', 'dead', 'cancelled') THEN now() END)
        """,
        {
            "id": job_id,
            "task": task,
            "queue": queue,
            "state": state,
            "run": run,
            "attempts": attempts,
            "max_attempts": max_attempts,
            "worker": worker_id or (WORKER if running else None),
            "lease": (30.0 if lease_in is None else lease_in) if running else None,
            "due": due_in,
            "published": published,
        },
    )
    if running:
        conn.execute(
            "INSERT INTO job_attempts (job_id, run, attempt, worker_id) VALUES (%s, %s, %s, %s)",
            (job_id, run, attempts, worker_id or WORKER),
        )
    return job_id


def running(conn: psycopg.Connection[Any], **fields: Any) -> Token:
    """A job running its first attempt under a live lease, and the token that owns it."""
    fields.setdefault("attempts", 1)
    job_id = given(conn, "running", **fields)
    return Token(job_id, fields.get("run", 1), fields["attempts"])


def row(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> dict[str, Any]:
    found = look.execute(
        """
        SELECT state, run, attempts, progress, last_error, result, worker_id, published_at,
               finished_at, lease_expires_at, available_at > now() AS delayed,
               lease_expires_at > now() AS leased, upstream_left
        FROM jobs WHERE id = %s
        """,
        (job_id,),
    ).fetchone()
    assert found is not None, f"job {job_id} is gone"
    return found


def attempts(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> list[dict[str, Any]]:
    return look.execute(
        "SELECT run, attempt, worker_id, outcome, error, finished_at IS NOT NULL AS closed"
        " FROM job_attempts WHERE job_id = %s ORDER BY run, attempt",
        (job_id,),
    ).fetchall()


def exists(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> bool:
    return look.execute("SELECT 1 FROM jobs WHERE id = %s", (job_id,)).fetchone() is not None


@contextmanager
def second_connection(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """Another session on the same database, as a second relay or worker would hold."""
    with psycopg.connect(conn.info.dsn, autocommit=True) as other:
        yield other
