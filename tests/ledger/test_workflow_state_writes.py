"""A workflow's stored state (0016): kept in the statement that changes a step's state, whichever
statement that is, right when two steps finish at once, and counted from the steps of the
workflows that were there before the migration."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.jobs.workflows import Workflow
from app.ledger import jobs as ledger
from app.ledger import workflows
from app.operate import actions
from app.tasks.example import echo
from tests.ledger.rows import second_connection
from tests.ledger.test_workflow_operations_writes import bury, workflow_of
from tests.ledger.test_workflow_writes import claim, diamond, succeed
from tests.support.infra import PG_ADMIN, Infra

pytestmark = pytest.mark.anyio


def stored(look: psycopg.Connection[dict[str, Any]], workflow_id: UUID) -> dict[str, Any]:
    found = look.execute(
        "SELECT state, unfinished, failed, finished_at IS NOT NULL AS finished FROM workflows WHERE id = %s",
        (workflow_id,),
    ).fetchone()
    assert found is not None
    return dict(found)


def test_a_workflow_is_running_until_its_last_step_succeeds_then_succeeded(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    steps = diamond(conn)
    workflow_id = workflow_of(look, steps["a"])
    assert stored(look, workflow_id) == {"state": "running", "unfinished": 4, "failed": 0, "finished": False}
    for name in ("a", "b", "c"):
        succeed(conn, steps[name])
    assert stored(look, workflow_id) == {"state": "running", "unfinished": 1, "failed": 0, "finished": False}
    succeed(conn, steps["d"], "app.tasks.example.gather")
    assert stored(look, workflow_id) == {"state": "succeeded", "unfinished": 0, "failed": 0, "finished": True}


async def test_a_dead_step_fails_the_workflow_and_its_replay_makes_it_run_again(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    workflow_id = workflow_of(look, steps["a"])
    succeed(conn, steps["a"])
    succeed(conn, steps["c"])
    bury(conn, steps["b"])
    assert stored(look, workflow_id) == {"state": "failed", "unfinished": 0, "failed": 2, "finished": True}
    async with aconn.transaction():
        await actions.replay(aconn, steps["b"])
    assert stored(look, workflow_id) == {"state": "running", "unfinished": 2, "failed": 0, "finished": False}
    succeed(conn, steps["b"])
    succeed(conn, steps["d"], "app.tasks.example.gather")
    assert stored(look, workflow_id)["state"] == "succeeded"


async def test_cancelling_a_workflow_or_discarding_its_dead_step_leaves_it_failed(
    conn: psycopg.Connection[Any],
    aconn: psycopg.AsyncConnection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    steps = diamond(conn)
    workflow_id = workflow_of(look, steps["a"])
    async with aconn.transaction():
        assert await workflows.cancel_steps(aconn, workflow_id) == 4
    assert stored(look, workflow_id) == {"state": "failed", "unfinished": 0, "failed": 4, "finished": True}
    leaf = Workflow("leaf").step("x", echo, {"message": "x"}).step("y", echo, {"message": "y"})
    two = leaf.enqueue_sync(session=conn)
    succeed(conn, two.steps["x"])
    bury(conn, two.steps["y"])
    async with aconn.transaction():
        await actions.discard(aconn, two.steps["y"])
    assert stored(look, two.id) == {"state": "failed", "unfinished": 0, "failed": 1, "finished": True}


def test_two_last_steps_finishing_in_two_transactions_at_once_leave_the_workflow_succeeded(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    pair = Workflow("pair").step("x", echo, {"message": "x"}).step("y", echo, {"message": "y"})
    made = pair.enqueue_sync(session=conn)
    x, y = claim(conn, made.steps["x"]), claim(conn, made.steps["y"])
    with second_connection(conn) as other:
        with conn.transaction():
            assert ledger.succeed(conn, [(x, "{}")]) == [True]
            done = threading.Event()

            def second() -> None:
                assert ledger.succeed(other, [(y, "{}")]) == [True]
                done.set()

            thread = threading.Thread(target=second)
            thread.start()
            assert not done.wait(0.5), "the second waits for the first's hold on the workflow"
        thread.join(10)
        assert done.is_set()
    assert stored(look, made.id) == {"state": "succeeded", "unfinished": 0, "failed": 0, "finished": True}


def test_the_migration_counts_the_workflows_already_there_from_their_steps(clean_ledger: Infra) -> None:
    from app.ledger.migrate import upgrade

    database = f"{clean_ledger.database}_wfstate"
    own = Infra(database=database, vhost=clean_ledger.vhost)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        upgrade(own.database_url, "0014")
        with psycopg.connect(own.libpq_url, autocommit=True) as db:
            db.execute(
                "INSERT INTO workflows (id, name, steps) VALUES"
                " ('00000000-0000-0000-0000-00000000000a', 'running', 2),"
                " ('00000000-0000-0000-0000-00000000000b', 'done', 1),"
                " ('00000000-0000-0000-0000-00000000000c', 'discarded', 2)"
            )
            db.execute(
                "INSERT INTO jobs (id, task, queue, payload, state, max_attempts, workflow_id, step,"
                " finished_at) VALUES"
                " (gen_random_uuid(), 't', 'q', '{}', 'succeeded', 1, '00000000-0000-0000-0000-00000000000a',"
                "  'x', now()),"
                " (gen_random_uuid(), 't', 'q', '{}', 'waiting', 1, '00000000-0000-0000-0000-00000000000a',"
                "  'y', NULL),"
                " (gen_random_uuid(), 't', 'q', '{}', 'succeeded', 1, '00000000-0000-0000-0000-00000000000b',"
                "  'x', now()),"
                " (gen_random_uuid(), 't', 'q', '{}', 'succeeded', 1, '00000000-0000-0000-0000-00000000000c',"
                "  'x', now())"
            )
        upgrade(own.database_url)
        with psycopg.connect(own.libpq_url) as db:
            rows = db.execute(
                "SELECT name, state, unfinished, failed, finished_at IS NOT NULL FROM workflows ORDER BY id"
            ).fetchall()
        assert rows == [
            ("running", "running", 1, 0, False),
            ("done", "succeeded", 0, 0, True),
            ("discarded", "failed", 0, 1, True),
        ]
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_a_repeated_keyed_workflow_answers_with_its_state_now(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    pair = Workflow("pair").step("x", echo, {"message": "x"})
    first = pair.enqueue_sync(session=conn, idempotency_key="once")
    assert first.state == "running"
    succeed(conn, first.steps["x"])
    again = pair.enqueue_sync(session=conn, idempotency_key="once")
    assert (again.id, again.replayed, again.state) == (first.id, True, "succeeded")


def test_retention_reads_a_workflows_stored_state_and_finish_time_not_its_steps(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    made = (
        Workflow("pair")
        .step("x", echo, {"message": "x"})
        .step("y", echo, {"message": "y"})
        .enqueue_sync(session=conn)
    )
    for name in ("x", "y"):
        succeed(conn, made.steps[name])
    retain = {"succeeded": 3600.0, "dead": 3600.0, "cancelled": 3600.0}
    conn.execute("UPDATE workflows SET finished_at = now() - interval '2 days'")
    assert workflows.prune(conn, retain, 100) == (1, 2), "finished two days ago, by its stored time"
    failing = Workflow("failing").step("x", echo, {"message": "x"}).step("y", echo, {"message": "y"})
    failed = failing.enqueue_sync(session=conn)
    succeed(conn, failed.steps["x"])
    bury(conn, failed.steps["y"])
    assert look.execute("SELECT state FROM workflows").fetchone() == {"state": "failed"}
    conn.execute("UPDATE workflows SET finished_at = now() - interval '2 days'")
    longest = {"succeeded": 3 * 86400.0, "dead": 3600.0, "cancelled": 3600.0}
    assert workflows.prune(conn, longest, 100) == (0, 0), "a failed workflow waits for the longest retention"
    conn.execute("UPDATE workflows SET finished_at = now() - interval '4 days'")
    assert workflows.prune(conn, longest, 100) == (1, 2)
    assert look.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}
