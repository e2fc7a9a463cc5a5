"""What the webhook statements write: the fan-out makes each matching delivery once and moves its
mark in the same statement, never past an event a still-open transaction may yet commit; a take
leases and counts the attempt; a finish is fenced by that count; pruning deletes only finished
deliveries past their retention.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

from app.ledger import webhooks

ECHO = "app.tasks.example.echo"


def subscribe(conn: psycopg.Connection[Any], events: list[str], task: str | None = None) -> uuid.UUID:
    webhook_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO webhooks (id, url, events, task, secret, created_by, created_at)"
        " VALUES (%s, 'http://127.0.0.1:9/', %s, %s, 'whsec_test', 'ops', now() - interval '1 minute')",
        (webhook_id, events, task),
    )
    return webhook_id


def event(conn: psycopg.Connection[Any], state: str = "succeeded", task: str = ECHO) -> uuid.UUID:
    job_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO job_events (job_id, task, queue, state, attempt) VALUES (%s, %s, 'default', %s, 1)",
        (job_id, task, state),
    )
    return job_id


def fan_out_until(conn: psycopg.Connection[Any], events: int, limit: int = 100) -> list[webhooks.FanOut]:
    """Steps until `events` were passed. A step may read fewer than are there: the horizon also
    waits for transactions of other sessions on this machine that it cannot place."""
    steps: list[webhooks.FanOut] = []
    deadline = time.monotonic() + 30
    while sum(step.events for step in steps) < events:
        assert time.monotonic() < deadline, steps
        steps.append(webhooks.fan_out(conn, limit))
        time.sleep(0.01)
    return steps


def delivered_jobs(look: psycopg.Connection[dict[str, Any]]) -> set[uuid.UUID]:
    return {row["job_id"] for row in look.execute("SELECT job_id FROM webhook_deliveries")}


def test_an_event_whose_transaction_commits_after_a_later_one_is_not_skipped(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]], clean_ledger: Any
) -> None:
    """Two writers: the first takes its xid and stays open, the second commits. A mark moved by
    id past the second would skip the first's event when it commits."""
    subscribe(conn, ["job.succeeded"])
    with psycopg.connect(clean_ledger.libpq_url) as slow:
        early = event(slow)  # xid taken, not committed
        late = event(conn)
        step = webhooks.fan_out(conn, 100)
        assert step.held
        assert step.events == 0, "nothing behind an open writer is read"
        assert delivered_jobs(look) == set()
        slow.commit()
    fan_out_until(conn, 2)
    assert delivered_jobs(look) == {early, late}
    assert webhooks.fan_out(conn, 100).events == 0, "the mark moved past both"


def test_the_fan_out_makes_one_delivery_per_matching_subscription_and_moves_in_batches(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    all_done = subscribe(conn, ["job.succeeded", "job.dead"])
    echo_dead = subscribe(conn, ["job.dead"], task=ECHO)
    jobs = [event(conn, state) for state in ("succeeded", "dead", "running", "dead")]
    other = event(conn, "dead", task="app.tasks.example.flaky")
    steps = fan_out_until(conn, 5, limit=2)
    assert max(step.events for step in steps) == 2
    assert webhooks.fan_out(conn, 2).events == 0
    rows = look.execute("SELECT webhook_id, job_id, event_type FROM webhook_deliveries").fetchall()
    made = {(row["webhook_id"], row["job_id"], row["event_type"]) for row in rows}
    assert made == {
        (all_done, jobs[0], "job.succeeded"),
        (all_done, jobs[1], "job.dead"),
        (all_done, jobs[3], "job.dead"),
        (all_done, other, "job.dead"),
        (echo_dead, jobs[1], "job.dead"),
        (echo_dead, jobs[3], "job.dead"),
    }


def test_a_relay_skips_the_fan_out_while_another_holds_the_mark(
    conn: psycopg.Connection[Any], clean_ledger: Any
) -> None:
    subscribe(conn, ["job.succeeded"])
    event(conn)
    with psycopg.connect(clean_ledger.libpq_url) as other:
        assert sum(step.deliveries for step in fan_out_until(other, 1)) == 1  # holds the mark
        step = webhooks.fan_out(conn, 100)
        assert not step.held
        assert step.deliveries == 0
        other.rollback()
    assert sum(s.deliveries for s in fan_out_until(conn, 1)) == 1, "a rolled back fan-out left its events"


def test_a_take_counts_the_attempt_and_leases_and_a_stale_finish_writes_nothing(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    subscribe(conn, ["job.succeeded"])
    event(conn)
    fan_out_until(conn, 1)
    [due] = webhooks.take(conn, 10, lease_seconds=60)
    assert due.attempt == 1
    assert webhooks.take(conn, 10, lease_seconds=60) == [], "leased"
    failed = webhooks.Outcome(due, "pending", 500, "HTTP 500", retry_in=0)
    assert webhooks.finish(conn, [failed]) == {due.id}
    [again] = webhooks.take(conn, 10, lease_seconds=60)
    assert again.attempt == 2
    stale, current = (
        webhooks.Outcome(due, "delivered", 200, None),
        webhooks.Outcome(again, "delivered", 200, None),
    )
    assert webhooks.finish(conn, [stale]) == set(), "fenced"
    assert webhooks.finish(conn, [stale, current]) == {again.id}
    row = look.execute("SELECT state, attempts, last_status, delivered_at FROM webhook_deliveries").fetchone()
    assert row is not None
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 2, 200)
    assert row["delivered_at"] is not None


@pytest.mark.parametrize("state", ["delivered", "dead"])
def test_pruning_deletes_finished_deliveries_past_their_retention_only(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]], state: str
) -> None:
    subscribe(conn, ["job.succeeded"])
    for _ in range(3):
        event(conn)
    fan_out_until(conn, 3)
    conn.execute(
        "UPDATE webhook_deliveries SET state = %s, finished_at = now() - interval '2 hours'"
        " WHERE id = (SELECT min(id) FROM webhook_deliveries)",
        (state,),
    )
    conn.execute(
        "UPDATE webhook_deliveries SET state = %s, finished_at = now()"
        " WHERE id = (SELECT max(id) FROM webhook_deliveries)",
        (state,),
    )
    assert webhooks.prune(conn, state, 3600, 100) == 1
    left = [row["state"] for row in look.execute("SELECT state FROM webhook_deliveries ORDER BY id")]
    assert left == ["pending", state], "a young one and a pending one stay"
    with pytest.raises(ValueError, match="pending"):
        webhooks.prune(conn, "pending", 0, 100)


def test_with_no_subscription_the_mark_jumps_past_the_events_and_a_later_one_gets_only_its_own(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    for _ in range(5):
        event(conn)
    newest = look.execute("SELECT max(id) AS id FROM job_events").fetchone()
    deadline = time.monotonic() + 30
    while (
        look.execute("SELECT event_id AS id FROM webhook_fanout WHERE name = 'events'").fetchone() != newest
    ):
        assert time.monotonic() < deadline, "the mark never reached the last event"
        step = webhooks.fan_out(conn, 2)
        assert (step.events, step.deliveries) == (0, 0), "nothing is read for nobody"
        time.sleep(0.01)
    subscribe(conn, ["job.succeeded"])
    later = event(conn)
    fan_out_until(conn, 1)
    assert delivered_jobs(look) == {later}
