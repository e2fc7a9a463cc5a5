"""Statements that move steps of several workflows at once lock the workflows' rows in one order
(id order, once the jobs' rows are locked): two of them over the same workflows in opposite
orders wait for each other in turn and never deadlock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.jobs.workflows import Workflow
from app.ledger import jobs as ledger
from app.ledger.jobs import Token
from app.tasks.example import echo
from tests.ledger.rows import second_connection
from tests.ledger.test_workflow_state_writes import stored
from tests.ledger.test_workflow_writes import claim


def pair(conn: psycopg.Connection[Any], name: str) -> tuple[UUID, dict[str, UUID]]:
    made = (
        Workflow(name)
        .step("x", echo, {"message": "x"})
        .step("y", echo, {"message": "y"})
        .enqueue_sync(session=conn)
    )
    return made.id, made.steps


def waiting_on_locks(look: psycopg.Connection[dict[str, Any]]) -> int:
    found = look.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert found is not None
    return int(found["n"])


def in_thread(action: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    def body() -> None:
        try:
            action()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def test_two_success_batches_over_two_workflows_in_opposite_orders_do_not_deadlock(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first, one = pair(conn, "one")
    second, two = pair(conn, "two")
    tokens: dict[str, Token] = {}
    # Each batch's steps move in the order it names them, whether the plan reads them by id (in
    # the batch's order) or running jobs by creation time (set here to the same order).
    for rank, (name, job_id) in enumerate(
        (("1x", one["x"]), ("2x", two["x"]), ("2y", two["y"]), ("1y", one["y"]))
    ):
        conn.execute(
            "UPDATE jobs SET created_at = now() + make_interval(secs => %s) WHERE id = %s", (rank, job_id)
        )
        tokens[name] = claim(conn, job_id)
    errors: list[BaseException] = []
    with second_connection(conn) as a, second_connection(conn) as b, second_connection(conn) as blocker:
        # The blocker holds the first workflow: batch A (first, then second) waits for it; batch B
        # (second, then first) starts meanwhile. Locked as the steps move, B would hold the second
        # workflow and wait for the first, which A gets once the blocker is done, then waits for
        # the second: a deadlock, and PostgreSQL aborts one of them.
        with blocker.transaction():
            blocker.execute("SELECT id FROM workflows WHERE id = %s FOR UPDATE", (first,))
            batch_a = in_thread(lambda: _succeed(a, [tokens["1x"], tokens["2x"]]), errors)
            _until(lambda: waiting_on_locks(look) >= 1)
            batch_b = in_thread(lambda: _succeed(b, [tokens["2y"], tokens["1y"]]), errors)
            _until(lambda: waiting_on_locks(look) >= 2)
        batch_a.join(30)
        batch_b.join(30)
    assert errors == []
    assert stored(look, first)["state"] == "succeeded"
    assert stored(look, second)["state"] == "succeeded"


def _succeed(conn: psycopg.Connection[Any], tokens: list[Token]) -> None:
    assert ledger.succeed(conn, [(token, "{}") for token in tokens]) == [True, True]


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the batch never came to wait for a lock")
        time.sleep(0.02)


def test_two_reapers_over_two_workflows_in_opposite_orders_do_not_deadlock(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first, one = pair(conn, "one")
    second, two = pair(conn, "two")
    # Leases expired in this order, on the last attempt (each step ends dead, which counts on its
    # workflow): the first reaper takes the two oldest (its limit), the second skips those it
    # holds and takes the other two, the workflows the other way round.
    for rank, job_id in enumerate((one["x"], two["x"], two["y"], one["y"])):
        claim(conn, job_id)
        conn.execute(
            "UPDATE jobs SET lease_expires_at = now() - make_interval(secs => %s), max_attempts = 1"
            " WHERE id = %s",
            (100 - rank, job_id),
        )
    errors: list[BaseException] = []
    reaped: list[int] = []

    def reap(other: psycopg.Connection[Any]) -> None:
        reaped.append(len(ledger.reap_expired_leases(other, limit=2)))

    with second_connection(conn) as a, second_connection(conn) as b, second_connection(conn) as blocker:
        with blocker.transaction():
            blocker.execute("SELECT id FROM workflows WHERE id = %s FOR UPDATE", (first,))
            reaper_a = in_thread(lambda: reap(a), errors)
            _until(lambda: waiting_on_locks(look) >= 1)
            reaper_b = in_thread(lambda: reap(b), errors)
            _until(lambda: waiting_on_locks(look) >= 2)
        reaper_a.join(30)
        reaper_b.join(30)
    assert errors == []
    assert reaped == [2, 2]
    assert stored(look, first)["state"] == stored(look, second)["state"] == "failed"
