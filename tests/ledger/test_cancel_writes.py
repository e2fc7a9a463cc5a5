"""Cancelling a running job, as the ledger writes it: the request (a flag and a NOTIFY), the
worker's poll, the fenced finish, and every other way out of `running` that must not retry a job
whose cancellation was asked."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.ledger import cancels
from app.ledger import jobs as ledger
from app.ledger.jobs import Doorbell, Token
from tests.ledger.rows import WORKER, attempts, given, row, running, second_connection

pytestmark = pytest.mark.anyio


def requested_at(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> Any:
    found = look.execute("SELECT cancel_requested_at FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return found["cancel_requested_at"]


async def test_a_request_flags_a_running_job_only_and_keeps_the_first_time(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    token = running(conn)
    others = [given(conn, state) for state in ("queued", "retrying", "succeeded", "dead", "cancelled")]
    assert await cancels.request(aconn, token.job_id) is True
    first = requested_at(look, token.job_id)
    assert first is not None
    assert row(look, token.job_id)["state"] == "running", "the worker ends it, not the request"
    assert await cancels.request(aconn, token.job_id) is True, "asking again is no error"
    assert requested_at(look, token.job_id) == first
    assert [await cancels.request(aconn, job_id) for job_id in others] == [False] * len(others)
    assert [requested_at(look, job_id) for job_id in others] == [None] * len(others)


async def test_a_request_wakes_the_listeners_with_the_job_id_when_it_commits(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    token = running(conn)
    with second_connection(conn) as listener:
        cancels.listen(listener)
        async with aconn.transaction():
            await cancels.request(aconn, token.job_id)
            assert list(listener.notifies(timeout=0.2)) == [], "not before the commit"
        payloads = [n.payload for n in listener.notifies(timeout=1.0, stop_after=1)]
    assert payloads == [str(token.job_id)]


async def test_the_poll_names_the_running_jobs_whose_cancellation_was_asked(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    asked, left_alone = running(conn), running(conn)
    await cancels.request(aconn, asked.job_id)
    assert cancels.requested(conn, [asked.job_id, left_alone.job_id]) == {asked.job_id}
    assert cancels.requested(conn, []) == set()
    assert ledger.succeed(conn, [(asked, "1")]) == [True]
    assert cancels.requested(conn, [asked.job_id]) == set(), "a finished job is no longer asked"


async def test_the_finish_ends_the_job_cancelled_with_its_attempt_and_no_result(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    token = running(conn)
    await cancels.request(aconn, token.job_id)
    assert cancels.finish(conn, token, "cancelled while running: the task stopped") is True
    after = row(look, token.job_id)
    assert (after["state"], after["result"], after["lease_expires_at"]) == ("cancelled", None, None)
    assert after["finished_at"] is not None
    assert [(a["outcome"], a["closed"]) for a in attempts(look, token.job_id)] == [("cancelled", True)]
    assert ledger.claim(conn, WORKER, 30.0, [Doorbell(token.job_id, "app.tasks.example.echo")]) == [None]


async def test_a_success_and_a_cancellation_of_one_attempt_are_never_both_written(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    succeeded_first, cancelled_first = running(conn), running(conn)
    for token in (succeeded_first, cancelled_first):
        await cancels.request(aconn, token.job_id)
    assert ledger.succeed(conn, [(succeeded_first, '"done"')]) == [True], "a finished task wins"
    assert cancels.finish(conn, succeeded_first, "late") is False
    assert cancels.finish(conn, cancelled_first, "cancelled") is True
    assert ledger.succeed(conn, [(cancelled_first, '"late"')]) == [False]
    assert (row(look, succeeded_first.job_id)["state"], row(look, succeeded_first.job_id)["result"]) == (
        "succeeded",
        "done",
    )
    assert (row(look, cancelled_first.job_id)["state"], row(look, cancelled_first.job_id)["result"]) == (
        "cancelled",
        None,
    )
    assert [a["outcome"] for a in attempts(look, succeeded_first.job_id)] == ["succeeded"]
    assert [a["outcome"] for a in attempts(look, cancelled_first.job_id)] == ["cancelled"]


def test_the_finish_is_refused_to_a_fenced_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn, attempts=2)
    assert cancels.finish(conn, Token(token.job_id, token.run, 1), "late") is False
    assert row(look, token.job_id)["state"] == "running"


async def test_a_failure_after_the_request_ends_the_job_cancelled_never_retrying(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    token = running(conn)
    await cancels.request(aconn, token.job_id)
    assert ledger.retry(conn, token, "TransientError: later", 0.0) == "cancelled"
    after = row(look, token.job_id)
    assert (after["state"], after["last_error"]) == ("cancelled", "TransientError: later")
    assert after["finished_at"] is not None
    assert [a["outcome"] for a in attempts(look, token.job_id)] == ["cancelled"]


async def test_a_progress_report_tells_the_task_its_cancellation_was_asked(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    token = running(conn)
    assert ledger.report_progress(conn, token, 10, 30.0) == (True, False)
    await cancels.request(aconn, token.job_id)
    assert ledger.report_progress(conn, token, 20, 30.0) == (True, True)


async def test_a_lost_released_or_withdrawn_attempt_of_a_job_asked_to_stop_ends_it_cancelled(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    lost = given(conn, "running", attempts=1, lease_in=-1)
    released = running(conn)
    withdrawn = running(conn)
    for job_id in (lost, released.job_id, withdrawn.job_id):
        await cancels.request(aconn, job_id)
    assert [reaped.state for reaped in ledger.reap_expired_leases(conn)] == ["cancelled"]
    assert ledger.release(conn, WORKER, [released.job_id], "worker shut down") == 1
    assert ledger.unclaim(conn, WORKER, [withdrawn]) == 1
    for job_id in (lost, released.job_id, withdrawn.job_id):
        after = row(look, job_id)
        assert (after["state"], after["finished_at"] is not None) == ("cancelled", True), job_id


async def test_a_replayed_job_forgets_the_request_of_its_earlier_run(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    token = running(conn)
    await cancels.request(aconn, token.job_id)
    assert ledger.bury(conn, token, "PermanentError: no") is True
    [replayed] = await ledger.replay_dead(aconn, ids=[token.job_id], limit=1)
    assert replayed.id == token.job_id
    assert requested_at(look, token.job_id) is None
