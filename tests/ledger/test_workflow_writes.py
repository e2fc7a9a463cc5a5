"""Workflows as the ledger writes them: waiting steps that nothing publishes or claims, the count
down in the success's own statement, the cascade of a failure, the revival after a replay, and
retention that takes a workflow with its steps."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.jobs.workflows import Workflow
from app.ledger import jobs as ledger
from app.ledger import retention, workflows
from app.ledger.jobs import Doorbell, Token
from app.operate import actions
from app.tasks.example import echo, gather
from tests.ledger.rows import WORKER, row, second_connection

pytestmark = pytest.mark.anyio
ECHO = "app.tasks.example.echo"


def diamond(conn: psycopg.Connection[Any]) -> dict[str, UUID]:
    """a -> (b, c) -> d, stored in one statement."""
    flow = (
        Workflow("diamond")
        .step("a", echo, {"message": "a"})
        .step("b", echo, {"message": "b"}, after=["a"])
        .step("c", echo, {"message": "c"}, after=["a"])
        .step("d", gather, {}, after=["b", "c"])
    )
    return flow.enqueue_sync(session=conn).steps


def claim(conn: psycopg.Connection[Any], job_id: UUID, task: str = ECHO) -> Token:
    [claimed] = ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, task)])
    assert claimed is not None, "the step is claimable"
    return claimed.token


def succeed(conn: psycopg.Connection[Any], job_id: UUID, task: str = ECHO) -> None:
    token = claim(conn, job_id, task)
    assert ledger.succeed(conn, [(token, f'{{"from": "{job_id}"}}')]) == [True]


def states(look: psycopg.Connection[dict[str, Any]], steps: dict[str, UUID]) -> dict[str, str]:
    return {name: row(look, job_id)["state"] for name, job_id in steps.items()}


def test_a_step_with_upstream_steps_waits_and_is_never_published_or_claimed(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    assert states(look, steps) == {"a": "queued", "b": "waiting", "c": "waiting", "d": "waiting"}
    assert row(look, steps["d"])["upstream_left"] == 2
    with conn.transaction():
        taken = {job.id for job in ledger.take_publishable(conn, 100)}
    assert taken == {steps["a"]}, "the relay publishes the step that waits for none"
    bells = [Doorbell(steps[s], ECHO) for s in ("b", "c")]
    assert ledger.claim(conn, WORKER, 30.0, bells) == [None, None]
    assert ledger.reap_expired_leases(conn) == []
    assert states(look, steps)["b"] == "waiting"


def test_each_success_counts_down_and_the_last_one_queues_the_step_and_wakes_the_relay(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    succeed(conn, steps["a"])
    assert states(look, steps) == {"a": "succeeded", "b": "queued", "c": "queued", "d": "waiting"}
    succeed(conn, steps["b"])
    assert row(look, steps["d"])["upstream_left"] == 1
    assert states(look, steps)["d"] == "waiting"
    with second_connection(conn) as listener:
        listener.execute("LISTEN conveyor_jobs")
        succeed(conn, steps["c"])
        assert list(listener.notifies(timeout=5, stop_after=1)), "the relay is woken"
    assert states(look, steps)["d"] == "queued"
    results = workflows.upstream_results(conn, steps["d"])
    assert results == {
        "b": ("succeeded", {"from": str(steps["b"])}),
        "c": ("succeeded", {"from": str(steps["c"])}),
    }


def test_two_upstream_successes_committing_at_once_queue_the_step_once(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    succeed(conn, steps["a"])
    b, c = claim(conn, steps["b"]), claim(conn, steps["c"])
    with second_connection(conn) as other:
        with conn.transaction():
            assert ledger.succeed(conn, [(b, "{}")]) == [True]
            done = threading.Event()

            def second() -> None:
                assert ledger.succeed(other, [(c, "{}")]) == [True]
                done.set()

            thread = threading.Thread(target=second)
            thread.start()
            assert not done.wait(0.5), "the second success waits for the first's row lock on d"
        thread.join(10)
        assert done.is_set()
    found = row(look, steps["d"])
    assert (found["state"], found["upstream_left"]) == ("queued", 0)


def test_a_fenced_out_success_counts_nothing_down(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    token = claim(conn, steps["a"])
    stale = Token(token.job_id, token.run, token.attempt + 1)
    assert ledger.succeed(conn, [(stale, "{}")]) == [False]
    assert states(look, steps)["b"] == "waiting"
    assert row(look, steps["b"])["upstream_left"] == 1


async def test_a_dead_step_cancels_its_downstream_and_its_replay_lets_the_workflow_succeed(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    succeed(conn, steps["a"])
    succeed(conn, steps["c"])
    token = claim(conn, steps["b"])
    with conn.transaction():
        assert ledger.bury(conn, token, "boom")
        assert workflows.cancel_downstream(conn, [token.job_id]) == 1
    assert states(look, steps) == {"a": "succeeded", "b": "dead", "c": "succeeded", "d": "cancelled"}
    assert row(look, steps["d"])["last_error"] == "upstream b dead"
    async with aconn.transaction():
        await actions.replay(aconn, steps["b"])
    assert states(look, steps)["d"] == "waiting"
    assert row(look, steps["d"])["upstream_left"] == 1, "c has succeeded: only b is awaited"
    succeed(conn, steps["b"])
    succeed(conn, steps["d"], "app.tasks.example.gather")
    assert set(states(look, steps).values()) == {"succeeded"}


async def test_a_failure_cancels_transitively_and_a_replay_leaves_cancelled_what_another_failure_blocks(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    flow = (
        Workflow("chain")
        .step("x", echo, {"message": "x"})
        .step("y", echo, {"message": "y"})
        .step("m", echo, {"message": "m"}, after=["x", "y"])
        .step("n", echo, {"message": "n"}, after=["m"])
    )
    steps = flow.enqueue_sync(session=conn).steps
    for name in ("x", "y"):
        token = claim(conn, steps[name])
        with conn.transaction():
            assert ledger.bury(conn, token, "boom")
            workflows.cancel_downstream(conn, [token.job_id])
    assert states(look, steps) == {"x": "dead", "y": "dead", "m": "cancelled", "n": "cancelled"}
    assert row(look, steps["n"])["last_error"] == "upstream x dead", "the cause, named through the chain"
    async with aconn.transaction():
        await actions.replay(aconn, steps["x"])
    assert states(look, steps) == {"x": "queued", "y": "dead", "m": "cancelled", "n": "cancelled"}
    async with aconn.transaction():
        await actions.replay(aconn, steps["y"])
    assert states(look, steps) == {"x": "queued", "y": "queued", "m": "waiting", "n": "waiting"}
    assert (row(look, steps["m"])["upstream_left"], row(look, steps["n"])["upstream_left"]) == (2, 1)


async def test_an_operator_cancel_of_a_waiting_step_cancels_what_comes_after_it(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    async with aconn.transaction():
        assert await actions.cancel(aconn, steps["b"]) == "cancelled"
    assert states(look, steps) == {"a": "queued", "b": "cancelled", "c": "waiting", "d": "cancelled"}
    assert row(look, steps["d"])["last_error"] == "upstream b cancelled"


def test_the_safety_sweep_queues_a_step_whose_upstream_all_succeeded(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    succeed(conn, steps["a"])
    # As a revival that raced a success leaves it: waiting, its count one too high.
    conn.execute(
        "UPDATE jobs SET state = 'waiting', upstream_left = 1, updated_at = now() - interval '1 hour'"
        " WHERE id = %s",
        (steps["b"],),
    )
    assert workflows.settle_waiting(conn, 60.0) == 1
    assert states(look, steps)["b"] == "queued"
    assert states(look, steps)["d"] == "waiting", "d's upstream steps have not succeeded"


def test_retention_prunes_a_workflow_with_its_steps_never_a_step_alone(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    for name in ("a", "b"):
        succeed(conn, steps[name])
    conn.execute("UPDATE jobs SET finished_at = now() - interval '2 days' WHERE finished_at IS NOT NULL")
    retain = {"succeeded": 3600.0, "dead": 3600.0, "cancelled": 3600.0}
    assert retention.prune_jobs(conn, "succeeded", 3600.0, 100) == 0, "a step is never pruned alone"
    assert workflows.prune(conn, retain, 100) == (0, 0), "the workflow still runs"
    for name, task in (("c", ECHO), ("d", "app.tasks.example.gather")):
        succeed(conn, steps[name], task)
    assert workflows.prune(conn, retain, 100) == (0, 0), "its last steps are within their retention"
    conn.execute("UPDATE jobs SET finished_at = now() - interval '2 days' WHERE finished_at IS NOT NULL")
    conn.execute("UPDATE workflows SET finished_at = now() - interval '2 days'")
    assert workflows.prune(conn, retain, 100) == (1, 4)
    assert look.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}
    assert look.execute("SELECT count(*) AS n FROM workflows").fetchone() == {"n": 0}
