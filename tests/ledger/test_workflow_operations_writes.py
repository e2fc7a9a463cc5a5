"""A workflow's idempotency key, cancelling a whole workflow, and discarding a dead step, as the
ledger writes them: each state change with its event, and no step left waiting for a step that
is gone."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.errors import IdempotencyConflict
from app.jobs.workflows import AcceptedWorkflow, Workflow
from app.ledger import jobs as ledger
from app.ledger import workflows
from app.operate import actions
from app.tasks.example import echo
from tests.ledger.rows import row, second_connection
from tests.ledger.test_workflow_writes import claim, diamond, states, succeed

pytestmark = pytest.mark.anyio


def flow(message: str = "a") -> Workflow:
    return (
        Workflow("keyed").step("a", echo, {"message": message}).step("b", echo, {"message": "b"}, after=["a"])
    )


def counts(look: psycopg.Connection[dict[str, Any]]) -> tuple[int, int, int]:
    found = look.execute(
        "SELECT (SELECT count(*) FROM workflows) AS w, (SELECT count(*) FROM jobs) AS j,"
        " (SELECT count(*) FROM job_events) AS e"
    ).fetchone()
    assert found is not None
    return found["w"], found["j"], found["e"]


def events(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> list[str]:
    found = look.execute("SELECT state FROM job_events WHERE job_id = %s ORDER BY id", (job_id,))
    return [r["state"] for r in found.fetchall()]


def column(look: psycopg.Connection[dict[str, Any]], job_id: UUID, name: str) -> Any:
    found = look.execute(f"SELECT {name} AS v FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return found["v"]


def workflow_of(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> UUID:
    return UUID(str(column(look, job_id, "workflow_id")))


def bury(conn: psycopg.Connection[Any], job_id: UUID) -> None:
    token = claim(conn, job_id)
    with conn.transaction():
        assert ledger.bury(conn, token, "boom")
        workflows.cancel_downstream(conn, [job_id])


# -- an idempotency key ----------------------------------------------------------------------


def test_the_same_key_with_the_same_workflow_answers_the_first_and_stores_nothing_more(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first = flow().enqueue_sync(session=conn, client_id="k1", idempotency_key="nightly-1")
    assert not first.replayed
    assert counts(look) == (1, 2, 2)
    again = flow().enqueue_sync(session=conn, client_id="k1", idempotency_key="nightly-1")
    assert again.replayed
    assert (again.id, again.steps) == (first.id, first.steps)
    assert counts(look) == (1, 2, 2), "no workflow, step or event more"
    held = look.execute("SELECT id FROM jobs WHERE idempotency_key = 'nightly-1'").fetchall()
    assert held == [{"id": first.steps["a"]}], "the first step holds it"


def test_the_same_key_with_another_workflow_or_for_a_job_is_a_conflict_and_stores_nothing(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    flow().enqueue_sync(session=conn, client_id="k1", idempotency_key="nightly-1")
    with pytest.raises(IdempotencyConflict):
        flow("other").enqueue_sync(session=conn, client_id="k1", idempotency_key="nightly-1")
    echo.enqueue_sync({"message": "x"}, session=conn, idempotency_key="a-job")
    with pytest.raises(IdempotencyConflict):
        flow().enqueue_sync(session=conn, idempotency_key="a-job")
    assert counts(look)[:2] == (1, 3)


def test_a_key_belongs_to_its_client_and_is_free_again_past_its_window(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first = flow().enqueue_sync(session=conn, client_id="k1", idempotency_key="nightly-1")
    other = flow().enqueue_sync(session=conn, client_id="k2", idempotency_key="nightly-1")
    assert other.id != first.id
    assert not other.replayed
    conn.execute("UPDATE jobs SET created_at = now() - interval '3 days'")
    later = flow("other").enqueue_sync(session=conn, client_id="k1", idempotency_key="nightly-1")
    assert (later.id != first.id, later.replayed) == (True, False), "the key's window had passed"
    assert counts(look)[0] == 3


def test_a_repeat_waits_for_the_first_request_in_flight_and_answers_its_workflow(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    answers: list[AcceptedWorkflow] = []
    with second_connection(conn) as other:
        with other.transaction():
            first = flow().enqueue_sync(session=other, client_id="k1", idempotency_key="race")
            repeat = threading.Thread(
                target=lambda: answers.append(
                    flow().enqueue_sync(session=conn, client_id="k1", idempotency_key="race")
                )
            )
            repeat.start()
            repeat.join(0.5)
            assert repeat.is_alive(), "the repeat waits for the first request's transaction"
        repeat.join(10)
    assert [(a.id, a.replayed) for a in answers] == [(first.id, True)]
    assert counts(look)[:2] == (1, 2)


# -- cancelling a whole workflow --------------------------------------------------------------


async def test_cancelling_a_workflow_cancels_what_has_not_started_and_asks_running_steps_to_stop(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    succeed(conn, steps["a"])
    claim(conn, steps["b"])
    workflow_id = workflow_of(look, steps["a"])
    with second_connection(conn) as listener:
        listener.execute("LISTEN conveyor_cancel")
        async with aconn.transaction():
            assert await workflows.cancel_steps(aconn, workflow_id) == 2
            assert await workflows.request_cancel_steps(aconn, workflow_id) == 1
        woken = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert woken == [str(steps["b"])], "the worker running b is woken"
    assert states(look, steps) == {"a": "succeeded", "b": "running", "c": "cancelled", "d": "cancelled"}
    assert column(look, steps["b"], "cancel_requested_at") is not None
    for name in ("c", "d"):
        assert row(look, steps[name])["last_error"] == "workflow cancelled"
        assert events(look, steps[name])[-1] == "cancelled", "each cancel is logged"
    assert events(look, steps["b"])[-1] == "running", "a request changes no state"


async def test_a_cancelled_workflow_stays_cancelled_when_a_dead_step_is_replayed(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    succeed(conn, steps["a"])
    bury(conn, steps["b"])
    workflow_id = workflow_of(look, steps["a"])
    async with aconn.transaction():
        assert await workflows.cancel_steps(aconn, workflow_id) == 1, "c; d was cancelled already"
    async with aconn.transaction():
        await actions.replay(aconn, steps["b"])
    assert states(look, steps) == {"a": "succeeded", "b": "queued", "c": "cancelled", "d": "cancelled"}


# -- discarding a dead step -------------------------------------------------------------------


async def test_discarding_a_dead_step_leaves_its_downstream_cancelled_for_good(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    chain = (
        Workflow("chain")
        .step("x", echo, {"message": "x"})
        .step("y", echo, {"message": "y"})
        .step("m", echo, {"message": "m"}, after=["x", "y"])
        .step("n", echo, {"message": "n"}, after=["m"])
    )
    steps = chain.enqueue_sync(session=conn).steps
    bury(conn, steps["x"])
    bury(conn, steps["y"])
    async with aconn.transaction():
        await actions.discard(aconn, steps["x"])
    assert row(look, steps["m"])["last_error"] == "discarded upstream x"
    async with aconn.transaction():
        await actions.replay(aconn, steps["y"])
    found = {name: row(look, job_id) for name, job_id in steps.items() if name != "x"}
    assert {name: r["state"] for name, r in found.items()} == {
        "y": "queued",
        "m": "cancelled",
        "n": "cancelled",
    }, "nothing waits for a step that is gone"


async def test_discarding_a_dead_step_cancels_its_downstream_still_waiting_transitively_with_events(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    chain = (
        Workflow("chain")
        .step("x", echo, {"message": "x"})
        .step("m", echo, {"message": "m"}, after=["x"])
        .step("n", echo, {"message": "n"}, after=["m"])
    )
    steps = chain.enqueue_sync(session=conn).steps
    token = claim(conn, steps["x"])
    assert ledger.bury(conn, token, "boom"), "dead, its downstream left waiting (as a race may)"
    async with aconn.transaction():
        await actions.discard(aconn, steps["x"])
    assert (row(look, steps["m"])["state"], row(look, steps["m"])["last_error"]) == (
        "cancelled",
        "discarded upstream x",
    )
    assert (row(look, steps["n"])["state"], row(look, steps["n"])["last_error"]) == (
        "cancelled",
        "upstream m cancelled",
    )
    for name in ("m", "n"):
        assert events(look, steps[name]) == ["waiting", "cancelled"]


async def test_a_discard_of_a_plain_dead_job_touches_nothing_else(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    job = echo.enqueue_sync({"message": "plain"}, session=conn)
    token = claim(conn, job.id)
    assert ledger.bury(conn, token, "boom")
    async with aconn.transaction():
        await actions.discard(aconn, job.id)
    assert states(look, steps) == {"a": "queued", "b": "waiting", "c": "waiting", "d": "waiting"}
