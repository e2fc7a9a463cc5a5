"""The event log as the ledger writes it: every statement that changes a job's state logs the
new state in the same statement (so in the same transaction), once per job changed, and wakes
the log's readers when it commits; a write that changes nothing logs nothing."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.ledger import cancels, flow
from app.ledger import jobs as ledger
from app.ledger.event_schema import EVENTS_CHANNEL
from app.ledger.jobs import Doorbell, NewJob
from tests.ledger.rows import WORKER, given, running, second_connection

pytestmark = pytest.mark.anyio
ECHO = "app.tasks.example.echo"


def logged(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> list[tuple[str, int]]:
    rows = look.execute(
        "SELECT state, attempt FROM job_events WHERE job_id = %s ORDER BY xid, id", (job_id,)
    ).fetchall()
    return [(r["state"], r["attempt"]) for r in rows]


def new_job(client_id: str | None = None) -> NewJob:
    return NewJob(
        task=ECHO, queue="default", payload_json='{"message": "hi"}', max_attempts=3, client_id=client_id
    )


def test_an_accepted_job_logs_queued_with_its_task_queue_and_client(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job = new_job(client_id="key-1")
    assert ledger.insert(conn, [job, new_job()]) != set()
    event = look.execute("SELECT * FROM job_events WHERE job_id = %s", (job.id,)).fetchone()
    assert event is not None
    assert (event["state"], event["attempt"], event["task"], event["queue"], event["client_id"]) == (
        "queued",
        0,
        ECHO,
        "default",
        "key-1",
    )
    assert event["workflow_id"] is None
    assert event["at"] is not None
    assert look.execute("SELECT count(*) AS n FROM job_events").fetchone() == {"n": 2}


def test_a_job_left_out_by_its_idempotency_key_logs_nothing(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first = NewJob(task=ECHO, queue="default", payload_json="{}", max_attempts=3, idempotency_key="k")
    again = NewJob(task=ECHO, queue="default", payload_json="{}", max_attempts=3, idempotency_key="k")
    ledger.insert(conn, [first])
    assert ledger.insert(conn, [again]) == set()
    assert logged(look, first.id) == [("queued", 0)]
    assert logged(look, again.id) == []


def test_a_claim_logs_running_with_the_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "retrying", attempts=1)
    missing = given(conn, "succeeded")
    claims = ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, ECHO), Doorbell(missing, ECHO)])
    assert claims[0] is not None
    assert claims[1] is None
    assert logged(look, job_id) == [("running", 2)]
    assert logged(look, missing) == [], "a job not claimed logs nothing"


def test_a_claim_within_limits_logs_running_and_a_held_job_logs_nothing(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first, second = given(conn, "queued", published=True), given(conn, "queued", published=True)
    conn.execute(
        "UPDATE jobs SET concurrency_key = 'k', concurrency_limit = 1 WHERE id = ANY(%s)", ([first, second],)
    )
    claims, held = flow.claim_limited(conn, WORKER, 30.0, [Doorbell(first, ECHO), Doorbell(second, ECHO)])
    assert claims[0] is not None
    assert held == {second}
    assert logged(look, first) == [("running", 1)]
    assert logged(look, second) == []


def test_a_batch_of_successes_logs_one_event_each_and_a_fenced_out_one_none(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    a, b = running(conn), running(conn)
    stale = running(conn, attempts=2)
    stale_token = ledger.Token(stale.job_id, 1, 1)
    assert ledger.succeed(conn, [(a, "1"), (b, "2"), (stale_token, "3")]) == [True, True, False]
    assert logged(look, a.job_id) == [("succeeded", 1)]
    assert logged(look, b.job_id) == [("succeeded", 1)]
    assert logged(look, stale.job_id) == []


def test_a_retry_logs_retrying_or_cancelled_when_that_was_asked(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    plain, asked = running(conn), running(conn)
    assert ledger.retry(conn, plain, "boom", 0.0) == "retrying"
    conn.execute("UPDATE jobs SET cancel_requested_at = now() WHERE id = %s", (asked.job_id,))
    assert ledger.retry(conn, asked, "boom", 0.0) == "cancelled"
    assert logged(look, plain.job_id) == [("retrying", 1)]
    assert logged(look, asked.job_id) == [("cancelled", 1)]
    assert ledger.retry(conn, plain, "again", 0.0) is None
    assert logged(look, plain.job_id) == [("retrying", 1)], "fenced out: nothing more"


def test_a_burial_logs_dead(conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]) -> None:
    token = running(conn, attempts=3)
    assert ledger.bury(conn, token, "permanent") is True
    assert logged(look, token.job_id) == [("dead", 3)]


def test_a_release_logs_retrying_or_dead_after_the_last_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    early, last = running(conn), running(conn, attempts=3)
    assert ledger.release(conn, WORKER, [early.job_id, last.job_id], "shutting down") == 2
    assert logged(look, early.job_id) == [("retrying", 1)]
    assert logged(look, last.job_id) == [("dead", 3)]


def test_an_unclaim_logs_the_job_back_in_queued_with_its_attempt_given_back(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn)
    assert ledger.unclaim(conn, WORKER, [token]) == 1
    assert logged(look, token.job_id) == [("queued", 0)]


def test_the_reaper_logs_retrying_or_dead(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    lost, spent = running(conn, lease_in=-1.0), running(conn, attempts=3, lease_in=-1.0)
    live = running(conn)
    ledger.reap_expired_leases(conn)
    assert logged(look, lost.job_id) == [("retrying", 1)]
    assert logged(look, spent.job_id) == [("dead", 3)]
    assert logged(look, live.job_id) == []


async def test_a_cancel_logs_cancelled_and_a_refused_one_nothing(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    queued, done = given(conn, "queued"), given(conn, "succeeded")
    assert await cancels.cancel(aconn, queued) is True
    assert await cancels.cancel(aconn, done) is False
    assert logged(look, queued) == [("cancelled", 0)]
    assert logged(look, done) == []


def test_a_finished_cancellation_logs_cancelled(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn)
    assert cancels.finish(conn, token, "cancelled") is True
    assert logged(look, token.job_id) == [("cancelled", 1)]


async def test_a_replay_logs_queued_as_a_new_run_from_attempt_zero(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    dead = given(conn, "dead", attempts=3)
    assert len(await ledger.replay_dead(aconn, ids=[dead], limit=10)) == 1
    assert logged(look, dead) == [("queued", 0)]


def test_a_change_rolled_back_leaves_no_event(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn)
    with conn.transaction(force_rollback=True):
        assert ledger.succeed(conn, [(token, "1")]) == [True]
    assert logged(look, token.job_id) == []


def test_readers_are_woken_once_per_transaction_and_only_at_commit(conn: psycopg.Connection[Any]) -> None:
    tokens = [running(conn) for _ in range(3)]
    with second_connection(conn) as listener:
        listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        with conn.transaction():
            ledger.succeed(conn, [(tokens[0], "1"), (tokens[1], "2")])
            ledger.bury(conn, tokens[2], "x")
            assert list(listener.notifies(timeout=0.2)) == [], "not before the commit"
        woken = list(listener.notifies(timeout=0.5))
    assert [n.payload for n in woken] == [""], "one wake for the transaction's three events"
