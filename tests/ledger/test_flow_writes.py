"""Flow control in the ledger: claims within concurrency and rate limits, jobs held back for the
relay, the relay's take per key, and paused queues."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.ledger import flow, queries
from app.ledger import jobs as ledger
from app.ledger.jobs import Doorbell
from tests.ledger.rows import WORKER, given, row, running, second_connection

REPORT = "app.tasks.example.tenant_report"
PARTNER = "app.tasks.example.call_partner"
ECHO = "app.tasks.example.echo"


def limited(conn: psycopg.Connection[Any], state: str, key: str, limit: int = 2, **fields: Any) -> UUID:
    """A job of a task with `concurrency=limit` per key, in `state`."""
    job_id = given(conn, state, task=REPORT, **fields)
    conn.execute(
        "UPDATE jobs SET concurrency_key = %s, concurrency_limit = %s WHERE id = %s", (key, limit, job_id)
    )
    return job_id


def rated(conn: psycopg.Connection[Any], key: str, per_hour: int, **fields: Any) -> UUID:
    """A queued job of a task with `rate=f"{per_hour}/hour"` per key."""
    job_id = given(conn, "queued", task=PARTNER, **fields)
    conn.execute(
        "UPDATE jobs SET rate_key = %s, rate_limit = %s, rate_period = 3600 WHERE id = %s",
        (key, per_hour, job_id),
    )
    return job_id


def bells(task: str, *ids: UUID) -> list[Doorbell]:
    return [Doorbell(job_id, task) for job_id in ids]


def test_a_limited_claim_starts_no_more_than_the_limit_per_key_and_holds_the_rest_back(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    limited(conn, "running", "a", attempts=1)
    first, second, third = (limited(conn, "queued", "a", published=True) for _ in range(3))
    other = limited(conn, "queued", "b", published=True)
    claims = flow.claim_limited(conn, WORKER, 30.0, bells(REPORT, first, second, third, other))[0]
    assert [claim is not None for claim in claims] == [True, False, False, True]
    for waiting in (second, third):
        after = row(look, waiting)
        assert (after["state"], after["attempts"], after["published_at"], after["delayed"]) == (
            "queued",
            0,
            None,
            False,
        ), "held back for the relay, never failed, due as before"
    assert row(look, other)["state"] == "running", "another key's job starts beside the backlog"


def test_two_limited_claims_of_one_key_take_turns_so_the_second_counts_the_first(
    conn: psycopg.Connection[Any],
) -> None:
    jobs = [limited(conn, "queued", "a", published=True) for _ in range(3)]
    seen: list[Any] = []
    with second_connection(conn) as other:
        with conn.transaction():
            mine, _ = flow.claim_limited(conn, WORKER, 30.0, bells(REPORT, *jobs[:2]))
            racing = threading.Thread(
                target=lambda: seen.extend(flow.claim_limited(other, "w2", 30.0, bells(REPORT, jobs[2]))[0])
            )
            racing.start()
            time.sleep(0.3)
            assert racing.is_alive(), "the second claim waits for the first one's transaction"
        racing.join(10)
    assert all(claim is not None for claim in mine)
    assert seen == [None], "the limit of 2 was full once the first claim committed"


def test_a_rate_starts_at_most_its_limit_per_window_and_the_rest_wait_for_the_next(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    jobs = [rated(conn, "p", 2, published=True) for _ in range(3)]
    other = rated(conn, "q", 2, published=True)
    claims, _ = flow.claim_limited(conn, WORKER, 30.0, bells(PARTNER, *jobs, other))
    assert [claim is not None for claim in claims] == [True, True, False, True]
    after = row(look, jobs[2])
    assert (after["state"], after["published_at"], after["delayed"]) == ("queued", None, True)
    late = rated(conn, "p", 2, published=True)
    assert flow.claim_limited(conn, WORKER, 30.0, bells(PARTNER, late)) == ([None], {late}), (
        "the window is full"
    )
    assert row(look, late)["delayed"]


def test_a_job_refused_only_for_its_paused_queue_is_held_back_and_a_started_one_is_left_alone(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    waiting = given(conn, "queued", published=True)
    started = running(conn, published=True)
    flow.pause_queue_sync(conn, "default")
    claims, held = flow.claim_limited(conn, WORKER, 30.0, bells(ECHO, waiting, started.job_id))
    assert (claims, held) == ([None, None], {waiting})
    assert row(look, waiting)["published_at"] is None
    assert row(look, started.job_id)["published_at"] is not None


def test_the_relay_takes_only_what_may_start_and_each_keys_first_jobs_first(
    conn: psycopg.Connection[Any],
) -> None:
    limited(conn, "running", "a", attempts=1)
    backlog = [limited(conn, "queued", "a", due_in=-10 + i) for i in range(5)]
    single = limited(conn, "queued", "b", due_in=-1)
    plain = given(conn, "queued", due_in=-20)
    with conn.transaction():
        taken = {job.id for job in flow.take_limited(conn, 10)}
    assert taken == {backlog[0], single}, "a's one free slot, b's job; never a job without limits"
    assert flow.take_limited(conn, 10) == [], "what was published holds its slot until it ends"
    assert [job.id for job in ledger.take_publishable(conn, 10)] == [plain]


def test_the_relay_publishes_at_most_a_windows_worth_of_a_rate_ahead(conn: psycopg.Connection[Any]) -> None:
    rated(conn, "p", 2, published=True)
    waiting = [rated(conn, "p", 2, due_in=-5 + i) for i in range(3)]
    assert [job.id for job in flow.take_limited(conn, 10)] == waiting[:1]


def test_a_paused_queue_is_neither_published_nor_claimed_until_it_is_resumed(
    conn: psycopg.Connection[Any],
) -> None:
    published = given(conn, "queued", published=True, queue="email")
    waiting = given(conn, "queued", queue="email", due_in=-1)
    held = limited(conn, "queued", "a", queue="email", due_in=-1)
    flow.pause_queue_sync(conn, "email")
    flow.pause_queue_sync(conn, "email")  # pausing twice changes nothing
    assert ledger.take_publishable(conn, 10) == []
    assert flow.take_limited(conn, 10) == []
    assert ledger.seconds_until_next_due(conn) is None, "the relay sleeps; the resume wakes it"
    assert ledger.claim(conn, WORKER, 30.0, bells(ECHO, published)) == [None]
    flow.resume_queue_sync(conn, "email")
    assert {job.id for job in ledger.take_publishable(conn, 10)} == {waiting}
    assert {job.id for job in flow.take_limited(conn, 10)} == {held}
    assert ledger.claim(conn, WORKER, 30.0, bells(ECHO, published))[0] is not None


def test_the_relay_does_not_wake_for_limited_jobs_that_wait_for_a_slot(conn: psycopg.Connection[Any]) -> None:
    limited(conn, "running", "a", attempts=1, limit=1)
    limited(conn, "queued", "a", due_in=-5)
    assert ledger.seconds_until_next_due(conn) is None
    rated(conn, "p", 1, due_in=30)
    due = ledger.seconds_until_next_due(conn)
    assert due is not None
    assert 25 < due <= 30, "a job over its rate is due when its window ends"


def test_a_finished_job_that_held_a_slot_wakes_the_relay(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    plain = running(conn)
    slot = limited(conn, "running", "a", attempts=1)
    look.execute("LISTEN conveyor_jobs")
    ledger.succeed(conn, [(plain, "{}")])
    assert list(look.notifies(timeout=0.3, stop_after=1)) == [], "a job without limits wakes nobody"
    ledger.succeed(conn, [(ledger.Token(slot, 1, 1), "{}")])
    assert len(list(look.notifies(timeout=2, stop_after=1))) == 1


def test_a_success_names_every_key_whose_slot_it_freed_in_one_notify(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    tokens = [ledger.Token(limited(conn, "running", key, attempts=1), 1, 1) for key in ("a", "a", "b")]
    long_key = ledger.Token(limited(conn, "running", "x" * 5000, attempts=1), 1, 1)
    odd_key = ledger.Token(limited(conn, "running", "c\x1ed", attempts=1), 1, 1)
    look.execute("LISTEN conveyor_jobs")
    ledger.succeed(conn, [(token, "{}") for token in tokens])
    named = [n.payload for n in look.notifies(timeout=0.5)]
    assert named == [f"slot:{REPORT}\x1fa\x1e{REPORT}\x1fb"], "one NOTIFY for the batch, each key once"
    ledger.succeed(conn, [(long_key, "{}")])
    assert [n.payload for n in look.notifies(timeout=2, stop_after=1)] == ["slot"], (
        "a name too long for a NOTIFY: every key is visited"
    )
    ledger.succeed(conn, [(odd_key, "{}")])
    assert [n.payload for n in look.notifies(timeout=2, stop_after=1)] == ["slot"], (
        "a key with the separator in it: every key is visited"
    )


def test_a_success_that_frees_many_keys_names_them_in_payloads_a_notify_can_carry(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    keys = [f"{i:03d}" + "k" * 600 for i in range(40)]  # 24 kB of names
    tokens = [ledger.Token(limited(conn, "running", key, attempts=1), 1, 1) for key in keys]
    look.execute("LISTEN conveyor_jobs")
    ledger.succeed(conn, [(token, "{}") for token in tokens])
    payloads = [n.payload for n in look.notifies(timeout=0.5)]
    assert 4 <= len(payloads) <= 8
    assert all(len(p.encode()) < 8000 and p.startswith("slot:") for p in payloads)
    named = [item.partition("\x1f") for p in payloads for item in p.removeprefix("slot:").split("\x1e")]
    assert sorted(key for _, _, key in named) == keys
    assert {task for task, _, _ in named} == {REPORT}


def test_the_relays_take_may_visit_only_the_keys_named(conn: psycopg.Connection[Any]) -> None:
    waiting = {key: limited(conn, "queued", key, due_in=-1) for key in ("a", "b", "c")}
    rated(conn, "p", 5, due_in=-1)
    with conn.transaction():
        taken = {
            job.id for job in flow.take_limited(conn, 10, {(REPORT, "a"), (REPORT, "c"), (PARTNER, "p")})
        }
        raise psycopg.Rollback
    assert taken == {waiting["a"], waiting["c"]}, "named concurrency keys only; no rate key"
    assert flow.take_limited(conn, 10, set()) == []
    assert len(flow.take_limited(conn, 10)) == 4, "every key"


def test_a_message_spent_on_a_paused_queue_leaves_its_job_for_the_relay_to_publish_at_resume(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    from app.execution.writes import claim_all

    published = given(conn, "queued", published=True)
    flow.pause_queue_sync(conn, "default")
    claims, held = claim_all(conn, WORKER, 30.0, bells(ECHO, published))
    assert (claims, held) == ([None], {published})
    assert row(look, published)["published_at"] is None
    assert ledger.take_publishable(conn, 10) == [], "held while the queue is paused"
    flow.resume_queue_sync(conn, "default")
    assert [job.id for job in ledger.take_publishable(conn, 10)] == [published]


def test_a_burst_of_jobs_with_and_without_limits_is_claimed_in_the_order_asked_and_held_to_them(
    conn: psycopg.Connection[Any],
) -> None:
    import app.tasks  # noqa: F401  (the tasks with limits, as a worker knows them)
    from app.execution.writes import claim_all

    plain = given(conn, "queued", published=True)
    over = [limited(conn, "queued", "a", limit=1, published=True) for _ in range(2)]
    asked = [Doorbell(over[0], REPORT), Doorbell(plain, ECHO), Doorbell(over[1], REPORT)]
    claims, held = claim_all(conn, WORKER, 30.0, asked)
    assert [claim is not None and claim.token.job_id for claim in claims] == [over[0], plain, False]
    assert held == {over[1]}


def test_a_job_with_limits_is_held_to_them_even_by_a_worker_that_does_not_know_its_task_has_any(
    conn: psycopg.Connection[Any],
) -> None:
    from app.execution.writes import claim_all

    over = [limited(conn, "queued", "a", limit=1, published=True) for _ in range(2)]
    claims, held = claim_all(conn, WORKER, 30.0, bells("app.tasks.example.older_name", *over))
    assert [claim is not None for claim in claims] == [False, False], "the message names another task"
    for job_id in over:
        conn.execute("UPDATE jobs SET task = 'app.tasks.example.older_name' WHERE id = %s", (job_id,))
    claims, held = claim_all(conn, WORKER, 30.0, bells("app.tasks.example.older_name", *over))
    assert [claim is not None for claim in claims] == [True, False]
    assert held == {over[1]}


@pytest.mark.anyio
async def test_cancelling_a_published_job_with_limits_wakes_the_relay_for_its_slot(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    from app.ledger import cancels

    unpublished = limited(conn, "queued", "a")
    plain = given(conn, "queued", published=True)
    out = limited(conn, "queued", "a", published=True)
    look.execute("LISTEN conveyor_jobs")
    assert await cancels.cancel(aconn, unpublished) is True
    assert await cancels.cancel(aconn, plain) is True
    assert list(look.notifies(timeout=0.3, stop_after=1)) == [], "neither held a slot"
    assert await cancels.cancel(aconn, out) is True
    assert [n.payload for n in look.notifies(timeout=2, stop_after=1)] == ["slot"]


def test_a_job_with_limits_handed_back_by_the_reaper_wakes_the_relay(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    given(conn, "running", attempts=1, lease_in=-1)
    look.execute("LISTEN conveyor_jobs")
    assert len(ledger.reap_expired_leases(conn)) == 1
    assert list(look.notifies(timeout=0.3, stop_after=1)) == [], "a job without limits: the sweep's own take"
    lost = limited(conn, "running", "a", attempts=1, lease_in=-1)
    assert [reaped.id for reaped in ledger.reap_expired_leases(conn)] == [lost]
    assert [n.payload for n in look.notifies(timeout=2, stop_after=1)] == ["slot"]
    assert [job.id for job in flow.take_limited(conn, 10)] == [lost]


def test_the_relays_take_reads_only_the_jobs_each_key_may_publish(conn: psycopg.Connection[Any]) -> None:
    """Its cost follows the keys, not their backlogs: also when a backlog's jobs share one due
    time, as a bulk insert's do (the index entries read are counted with EXPLAIN ANALYZE)."""
    keys = [f"k{i}" for i in range(5)]
    for key in keys:
        limited(conn, "running", key, attempts=1)
    conn.execute(
        """
        INSERT INTO jobs (id, task, queue, payload, state, max_attempts, available_at,
                          concurrency_key, concurrency_limit)
        SELECT gen_random_uuid(), %s, 'default', '{}', 'queued', 3, now() - interval '1 second',
               'k' || (i %% 5), 2
        FROM generate_series(1, 500) AS i
        """,
        (REPORT,),
    )
    conn.execute("ANALYZE jobs")
    with conn.transaction():
        plan = conn.execute(
            "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + queries.TAKE_LIMITED,
            {"limit": 100, "every": True, "tasks": [], "keys": []},
        ).fetchone()
        raise psycopg.Rollback
    assert plan is not None
    read = sum(
        node["Actual Rows"] * node["Actual Loops"]
        for node in plan_nodes(plan[0][0]["Plan"])
        # A key's waiting jobs (the walk from key to key reads no due time)
        if node.get("Index Name") == "ix_jobs_waiting_concurrency"
        and "available_at" in node.get("Index Cond", "")
    )
    assert 0 < read <= 2 * len(keys), f"each key's one free slot, read {read} waiting jobs"


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
