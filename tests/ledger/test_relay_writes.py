"""What the relay writes: taking due jobs to publish (marked published when the relay's
transaction commits), reaping expired leases, and arming again publications nobody claimed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from app.ledger import jobs as ledger
from app.ledger import relays
from tests.ledger.rows import attempts, given, row, second_connection


def test_due_unpublished_jobs_are_taken_oldest_due_first_and_marked_published(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    later = given(conn, "queued", due_in=-1)
    earlier = given(conn, "retrying", due_in=-5, attempts=1)
    given(conn, "queued", due_in=60)  # delayed
    given(conn, "queued", published=True)  # already out
    given(conn, "running", attempts=1)
    with conn.transaction():
        taken = ledger.take_publishable(conn, 10)
        assert [job.id for job in taken] == [earlier, later]
        assert row(look, later)["published_at"] is None, "marked only when the relay commits"
    assert row(look, later)["published_at"] is not None
    assert ledger.take_publishable(conn, 10) == []


class PublishFailed(Exception):
    pass


def test_a_take_whose_publish_failed_leaves_its_jobs_to_publish_again(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "queued", due_in=-1)
    dead = given(conn, "dead", attempts=3)
    for take in (ledger.take_publishable, ledger.take_dead_letters):
        try:
            with conn.transaction():
                assert len(take(conn, 10)) == 1
                raise PublishFailed  # the broker did not take the messages: the relay rolls back
        except PublishFailed:
            pass
    assert row(look, job_id)["published_at"] is None
    assert row(look, dead)["published_at"] is None
    assert [job.id for job in ledger.take_publishable(conn, 10)] == [job_id]
    assert [job.id for job in ledger.take_dead_letters(conn, 10)] == [dead]


def test_two_relays_never_take_the_same_row(conn: psycopg.Connection[Any]) -> None:
    ids = {given(conn, "queued", due_in=-i) for i in range(1, 5)}
    with second_connection(conn) as other, conn.transaction(), other.transaction():
        mine = {job.id for job in ledger.take_publishable(conn, 2)}
        theirs = {job.id for job in ledger.take_publishable(other, 10)}
    assert len(mine) == 2
    assert mine | theirs == ids
    assert not mine & theirs


def test_the_next_due_time_is_how_long_until_an_unpublished_job_is_due(conn: psycopg.Connection[Any]) -> None:
    assert ledger.seconds_until_next_due(conn) is None
    given(conn, "queued", due_in=30)
    wait = ledger.seconds_until_next_due(conn)
    assert wait is not None
    assert 25 < wait <= 30


def test_an_expired_lease_hands_the_job_back_with_attempts_left(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "running", attempts=1, max_attempts=3, lease_in=-1, published=True)
    live = given(conn, "running", attempts=1, lease_in=30)
    [reaped] = ledger.reap_expired_leases(conn)
    assert (reaped.id, reaped.state) == (job_id, "retrying")
    after = row(look, job_id)
    assert (after["state"], after["published_at"], after["delayed"]) == ("retrying", None, False)
    assert "stopped renewing" in after["last_error"]
    assert [a["outcome"] for a in attempts(look, job_id)] == ["lost"]
    assert row(look, live)["state"] == "running"


def test_an_expired_lease_on_the_last_attempt_makes_the_job_dead(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    job_id = given(conn, "running", attempts=3, max_attempts=3, lease_in=-1)
    [reaped] = ledger.reap_expired_leases(conn)
    assert reaped.state == "dead"
    after = row(look, job_id)
    assert after["state"] == "dead"
    assert after["finished_at"] is not None
    assert after["published_at"] is None, "its copy is still to go to <queue>.XQ"
    assert [job.id for job in ledger.take_dead_letters(conn, 10)] == [job_id]


def test_dead_jobs_whose_copy_is_still_to_go_are_taken_for_the_dead_letter_queue(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    waiting = given(conn, "dead", attempts=3)
    given(conn, "dead", attempts=3, published=True)  # its copy went out already
    given(conn, "queued")
    with conn.transaction():
        taken = ledger.take_dead_letters(conn, 10)
        assert [(job.id, job.queue, job.run) for job in taken] == [(waiting, "default", 1)]
    assert ledger.take_dead_letters(conn, 10) == []
    assert row(look, waiting)["state"] == "dead"


def test_a_relay_heartbeat_records_it_and_a_stop_marks_it_stopped(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    beat = relays.Heartbeat("host:1:abc", "host", 1, datetime.now(UTC), published=5)
    relays.beat(conn, beat)
    relays.beat(conn, relays.Heartbeat("host:1:abc", "host", 1, beat.started_at, published=7))
    seen = look.execute("SELECT host, published, stopped_at FROM relays").fetchall()
    assert seen == [{"host": "host", "published": 7, "stopped_at": None}]
    relays.stop(conn, "host:1:abc")
    assert look.execute("SELECT stopped_at IS NOT NULL AS stopped FROM relays").fetchone() == {
        "stopped": True
    }


def test_a_publication_nobody_claimed_for_long_is_armed_again(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    stale = given(conn, "queued", published=True)
    conn.execute("UPDATE jobs SET published_at = now() - interval '1 hour' WHERE id = %s", (stale,))
    fresh = given(conn, "queued", published=True)
    assert ledger.rearm_stale_publications(conn, 600.0) == 1
    assert row(look, stale)["published_at"] is None
    assert row(look, fresh)["published_at"] is not None


def test_when_the_broker_forgot_every_unclaimed_publication_and_recent_dead_copy_is_armed_again_once(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    waiting = given(conn, "queued", published=True)
    retrying = given(conn, "retrying", attempts=1, published=True)
    dead = given(conn, "dead", attempts=3, published=True)
    old_dead = given(conn, "dead", attempts=3, published=True)
    conn.execute("UPDATE jobs SET finished_at = now() - interval '8 days' WHERE id = %s", (old_dead,))
    running = given(conn, "running", attempts=1, published=True)
    done = given(conn, "succeeded", attempts=1, published=True)
    cutoff = look.execute("SELECT now() + interval '1 second' AS at").fetchone()["at"]  # type: ignore[index]
    later = given(conn, "queued", published=True)
    conn.execute("UPDATE jobs SET published_at = %s + interval '1 second' WHERE id = %s", (cutoff, later))
    assert ledger.rearm_forgotten(conn, cutoff, 7 * 86400.0) == 3
    assert {job: row(look, job)["published_at"] is None for job in (waiting, retrying, dead)} == {
        waiting: True,
        retrying: True,
        dead: True,
    }
    for kept in (old_dead, running, done, later):
        assert row(look, kept)["published_at"] is not None
    assert ledger.rearm_forgotten(conn, cutoff, 7 * 86400.0) == 0, "one cutoff rearms once"
