"""What a worker writes: claim, succeed, retry, bury, progress, leases, release, heartbeat.

Each: given a row in state X, the statement leaves it in state Y; with a token that no
longer owns the job (fenced), it changes nothing and says so.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from app.ledger import artifacts, workers
from app.ledger import jobs as ledger
from app.ledger.jobs import Doorbell, Token
from tests.ledger.rows import WORKER, attempts, given, row, running

OTHER_WORKER = "host:2:fedcba"
ECHO = "app.tasks.example.echo"


def test_a_claim_takes_a_queued_job_and_opens_its_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "queued")
    [claim] = ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, ECHO)])
    assert claim is not None
    assert (claim.token, claim.task, claim.max_attempts) == (Token(job_id, 1, 1), ECHO, 3)
    assert claim.payload_json == '{"message": "hi"}', "what to run comes from the ledger"
    after = row(look, job_id)
    assert (after["state"], after["attempts"], after["worker_id"], after["leased"]) == (
        "running",
        1,
        WORKER,
        True,
    )
    assert attempts(look, job_id) == [
        {"run": 1, "attempt": 1, "worker_id": WORKER, "outcome": None, "error": None, "closed": False}
    ]


def test_a_claim_takes_a_retrying_job_that_is_due(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "retrying", attempts=1)
    [claim] = ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, ECHO)])
    assert claim is not None
    assert claim.token.attempt == 2
    assert row(look, job_id)["state"] == "running"


def test_a_claim_leaves_jobs_that_are_not_due_running_finished_or_out_of_attempts(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    not_due = given(conn, "queued", due_in=60)
    running_elsewhere = given(conn, "running", attempts=1, worker_id=OTHER_WORKER)
    finished = [given(conn, state) for state in ("succeeded", "dead", "cancelled")]
    used_up = given(conn, "retrying", attempts=3, max_attempts=3)
    asked = [not_due, running_elsewhere, *finished, used_up]
    assert ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, ECHO) for job_id in asked]) == [None] * len(
        asked
    )
    assert [row(look, job_id)["state"] for job_id in asked] == [
        "queued",
        "running",
        "succeeded",
        "dead",
        "cancelled",
        "retrying",
    ]
    assert row(look, running_elsewhere)["worker_id"] == OTHER_WORKER


def test_a_job_asked_for_twice_in_one_batch_is_claimed_once(conn: psycopg.Connection[Any]) -> None:
    job_id = given(conn, "queued")
    first, second = ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, ECHO), Doorbell(job_id, ECHO)])
    assert first is not None
    assert second is None


def test_in_one_batch_the_claim_goes_to_the_message_that_names_the_ledgers_task(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = given(conn, "queued")
    forged, genuine = ledger.claim(
        conn, WORKER, 30.0, [Doorbell(job_id, "app.tasks.example.sleep"), Doorbell(job_id, ECHO)]
    )
    assert forged is None
    assert genuine is not None
    assert genuine.task == ECHO


def test_a_message_that_names_another_task_than_the_ledger_claims_nothing(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "queued")
    assert ledger.claim(conn, WORKER, 30.0, [Doorbell(job_id, "app.tasks.example.sleep")]) == [None]
    assert row(look, job_id)["state"] == "queued"
    assert ledger.job_task(conn, job_id) == (ECHO, "queued")
    assert ledger.job_task(conn, uuid.uuid4()) is None


def test_a_success_by_the_owning_attempt_finishes_the_job_and_its_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn)
    assert ledger.succeed(conn, [(token, '{"message": "hi"}')]) == [True]
    after = row(look, token.job_id)
    assert (after["state"], after["result"], after["progress"]) == ("succeeded", {"message": "hi"}, 100)
    assert after["finished_at"] is not None
    assert after["lease_expires_at"] is None
    assert [(a["outcome"], a["closed"]) for a in attempts(look, token.job_id)] == [("succeeded", True)]


def test_a_success_by_an_attempt_that_lost_its_lease_is_refused(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn, attempts=2)
    stale = Token(token.job_id, token.run, 1)
    replayed_away = Token(token.job_id, 0, 2)
    assert ledger.succeed(conn, [(stale, "1"), (replayed_away, "2"), (token, "3")]) == [False, False, True]
    assert row(look, token.job_id)["result"] == 3


def test_a_retry_hands_the_job_back_for_later_and_wakes_nobody_early(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn, published=True)
    assert ledger.retry(conn, token, "TransientError: try later", 60.0) == "retrying"
    after = row(look, token.job_id)
    assert (after["state"], after["last_error"], after["delayed"]) == (
        "retrying",
        "TransientError: try later",
        True,
    )
    assert after["published_at"] is None, "the relay publishes it again when it is due"
    assert [(a["outcome"], a["error"]) for a in attempts(look, token.job_id)] == [
        ("retrying", "TransientError: try later")
    ]


def test_a_burial_makes_the_job_dead(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn)
    assert ledger.bury(conn, token, "PermanentError: no") is True
    after = row(look, token.job_id)
    assert (after["state"], after["last_error"]) == ("dead", "PermanentError: no")
    assert after["finished_at"] is not None
    assert [a["outcome"] for a in attempts(look, token.job_id)] == ["dead"]


def test_retry_bury_and_progress_are_refused_to_a_fenced_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn, attempts=2)
    stale = Token(token.job_id, token.run, 1)
    assert ledger.retry(conn, stale, "late", 0.0) is None
    assert ledger.bury(conn, stale, "late") is False
    assert ledger.report_progress(conn, stale, 50, 30.0) == (False, False)
    after = row(look, token.job_id)
    assert (after["state"], after["progress"], after["last_error"]) == ("running", 0, None)


def test_a_finished_job_refuses_every_worker_write(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "succeeded", attempts=1)
    token = Token(job_id, 1, 1)
    assert ledger.succeed(conn, [(token, "2")]) == [False]
    assert ledger.retry(conn, token, "late", 0.0) is None
    assert ledger.bury(conn, token, "late") is False
    assert row(look, job_id)["state"] == "succeeded"


def test_progress_is_recorded_and_renews_the_lease(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    token = running(conn, lease_in=1.0)
    before = row(look, token.job_id)["lease_expires_at"]
    assert ledger.report_progress(conn, token, 42, 300.0) == (True, False)
    after = row(look, token.job_id)
    assert after["progress"] == 42
    assert after["lease_expires_at"] > before


def test_renewing_leases_touches_only_this_workers_running_jobs(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    mine = running(conn, lease_in=1.0)
    theirs = running(conn, lease_in=1.0, worker_id=OTHER_WORKER)
    before = {t.job_id: row(look, t.job_id)["lease_expires_at"] for t in (mine, theirs)}
    assert ledger.renew_leases(conn, WORKER, [mine.job_id, theirs.job_id], 300.0) == 1
    assert row(look, mine.job_id)["lease_expires_at"] > before[mine.job_id]
    assert row(look, theirs.job_id)["lease_expires_at"] == before[theirs.job_id]
    assert ledger.renew_leases(conn, WORKER, [], 300.0) == 0


def test_a_release_hands_this_workers_jobs_back_at_once(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    mine = running(conn, published=True)
    theirs = running(conn, worker_id=OTHER_WORKER)
    assert ledger.release(conn, WORKER, [mine.job_id, theirs.job_id], "worker shut down") == 1
    after = row(look, mine.job_id)
    assert (after["state"], after["delayed"], after["published_at"]) == ("retrying", False, None)
    assert [a["outcome"] for a in attempts(look, mine.job_id)] == ["interrupted"]
    assert row(look, theirs.job_id)["state"] == "running"


def test_a_release_of_the_last_attempt_buries_the_job_as_the_reaper_would(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    last = running(conn, attempts=3, max_attempts=3, published=True)
    assert ledger.release(conn, WORKER, [last.job_id], "worker shut down") == 1
    after = row(look, last.job_id)
    # Not "retrying" with no attempt left: no claim could take it, and it would wait forever.
    assert (after["state"], after["published_at"], after["last_error"]) == ("dead", None, "worker shut down")
    assert [a["outcome"] for a in attempts(look, last.job_id)] == ["interrupted"]


def test_an_unclaim_undoes_a_claim_that_never_started(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first = given(conn, "queued", published=True)
    again = given(conn, "retrying", attempts=1, published=True)
    claims = ledger.claim(conn, WORKER, 30.0, [Doorbell(first, ECHO), Doorbell(again, ECHO)])
    tokens = [claim.token for claim in claims if claim is not None]
    assert [t.attempt for t in tokens] == [1, 2]
    assert ledger.unclaim(conn, WORKER, tokens) == 2
    fresh, retried = row(look, first), row(look, again)
    assert (fresh["state"], fresh["attempts"], fresh["published_at"], fresh["leased"]) == (
        "queued",
        0,
        None,
        None,  # no lease at all
    )
    assert (retried["state"], retried["attempts"], retried["published_at"]) == ("retrying", 1, None)
    assert attempts(look, first) == [], "the attempt that never started leaves no trace"
    assert attempts(look, again) == []
    # And the job can be claimed again, as its first (or second) attempt.
    [reclaimed] = ledger.claim(conn, OTHER_WORKER, 30.0, [Doorbell(first, ECHO)])
    assert reclaimed is not None
    assert reclaimed.token.attempt == 1


def test_an_unclaim_is_fenced_by_the_claims_token_and_worker(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    mine = running(conn)
    theirs = running(conn, worker_id=OTHER_WORKER)
    stale = Token(mine.job_id, mine.run, mine.attempt + 1)
    assert ledger.unclaim(conn, WORKER, [stale, Token(theirs.job_id, 1, 1)]) == 0
    assert row(look, mine.job_id)["state"] == "running"
    assert row(look, theirs.job_id)["state"] == "running"
    assert ledger.unclaim(conn, WORKER, []) == 0


def test_an_artifact_is_stored_once_per_job_and_replaced_by_a_later_attempt(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "running", attempts=1)
    artifacts.store_artifact(conn, job_id, "a.csv", "text/csv", b"first")
    artifacts.store_artifact(conn, job_id, "b.csv", "text/csv", b"second")
    stored = look.execute("SELECT name, content, size FROM job_artifacts WHERE job_id = %s", (job_id,))
    assert stored.fetchall() == [{"name": "b.csv", "content": b"second", "size": 6}]


def test_an_artifact_written_in_pieces_keeps_them_in_order_with_its_size_and_no_whole_copy(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "running", attempts=1)
    artifacts.store_artifact(conn, job_id, "old.csv", "text/csv", b"an earlier run's file")
    writer = artifacts.ArtifactWriter(conn, job_id, "jobs.csv", "text/csv")
    for piece in (b"id,task\n", b"", b"1,a\n", b"2,b\n"):
        writer.write(piece)
    writer.close()
    stored = look.execute("SELECT name, content, size FROM job_artifacts WHERE job_id = %s", (job_id,))
    assert stored.fetchall() == [{"name": "jobs.csv", "content": None, "size": 16}]
    pieces = look.execute(
        "SELECT seq, content FROM job_artifact_chunks WHERE job_id = %s ORDER BY seq", (job_id,)
    )
    assert [(p["seq"], p["content"]) for p in pieces] == [(0, b"id,task\n"), (1, b"1,a\n"), (2, b"2,b\n")]
    artifacts.ArtifactWriter(conn, job_id, "again.csv", "text/csv").close()
    left = look.execute("SELECT count(*) AS n FROM job_artifact_chunks WHERE job_id = %s", (job_id,))
    assert left.fetchone() == {"n": 0}, "a new file replaces the pieces of the last one"


def test_the_client_of_a_job_is_read_from_its_row(conn: psycopg.Connection[Any]) -> None:
    job_id = given(conn, "running", attempts=1)
    assert ledger.job_client(conn, job_id) == (True, None)
    conn.execute("UPDATE jobs SET client_id = 'abc123' WHERE id = %s", (job_id,))
    assert ledger.job_client(conn, job_id) == (True, "abc123")
    assert ledger.job_client(conn, uuid.uuid4()) == (False, None)


def test_a_heartbeat_records_the_worker_and_a_stop_marks_it_stopped(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    beat = workers.Heartbeat(WORKER, "host", 1, ["default"], datetime.now(UTC), in_flight=2, processed=5)
    workers.beat(conn, beat)
    workers.beat(conn, workers.Heartbeat(WORKER, "host", 1, ["default"], beat.started_at, 1, 9))
    seen = look.execute("SELECT in_flight, processed, queues, stopped_at FROM workers").fetchall()
    assert seen == [{"in_flight": 1, "processed": 9, "queues": ["default"], "stopped_at": None}]
    workers.stop(conn, WORKER)
    stopped = look.execute("SELECT in_flight, stopped_at IS NOT NULL AS stopped FROM workers").fetchone()
    assert stopped == {"in_flight": 0, "stopped": True}
