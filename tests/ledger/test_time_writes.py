"""What time writes: schedules (made, declared, fired once per tick, paused, resumed, deleted),
retention (finished jobs pruned with their history, never an unfinished one), idempotency
keys released after their window, and the rows of workers and relays long gone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.ledger import artifacts, retention
from app.ledger import jobs as ledger
from app.ledger import schedules as ledger_schedules
from app.ledger.jobs import NewJob
from app.ledger.schedules import Advance, NewSchedule
from tests.ledger.rows import attempts, exists, given, second_connection

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
DAY = 86_400.0
LIMIT = 1000  # schedules: more than any test here makes


def schedule(
    name: str = "every-minute", *, due_in: float = 60.0, every: int | None = 60, **fields: Any
) -> NewSchedule:
    values: dict[str, Any] = {
        "name": name,
        "task": ECHO,
        "queue": "default",
        "payload_json": '{"message": "tick"}',
        "max_attempts": 3,
        "cron": None if every else "* * * * *",
        "every_seconds": every,
        "timezone": "UTC",
        "next_run_at": datetime.now(UTC) + timedelta(seconds=due_in),
    } | fields
    return NewSchedule(**values)


def tick_job(name: str, tick: datetime) -> NewJob:
    return NewJob(ECHO, "default", '{"message": "tick"}', 3, schedule=name, scheduled_for=tick)


def age(
    conn: psycopg.Connection[Any],
    job_id: UUID,
    *,
    finished: float | None = None,
    created: float | None = None,
) -> None:
    """Move a job's finished_at or created_at that many seconds into the past."""
    if finished is not None:
        conn.execute(
            "UPDATE jobs SET finished_at = now() - make_interval(secs => %s) WHERE id = %s",
            (finished, job_id),
        )
    if created is not None:
        conn.execute(
            "UPDATE jobs SET created_at = now() - make_interval(secs => %s) WHERE id = %s", (created, job_id)
        )


def keyed(conn: psycopg.Connection[Any], key: str, created_ago: float) -> UUID:
    job_id = given(conn, "succeeded")
    conn.execute("UPDATE jobs SET idempotency_key = %s WHERE id = %s", (key, job_id))
    age(conn, job_id, created=created_ago)
    return job_id


def key_of(look: psycopg.Connection[dict[str, Any]], job_id: UUID) -> str | None:
    found = look.execute("SELECT idempotency_key FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    key: str | None = found["idempotency_key"]
    return key


# -- schedules --------------------------------------------------------------------------


async def test_a_new_schedule_is_stored_and_a_taken_name_is_left_out(
    aconn: psycopg.AsyncConnection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    assert await ledger_schedules.insert_async(aconn, schedule(), LIMIT) == "inserted"
    assert await ledger_schedules.insert_async(aconn, schedule(every=5), LIMIT) == "name taken"
    stored = look.execute("SELECT every_seconds, source, paused FROM schedules").fetchall()
    assert stored == [{"every_seconds": 60, "source": "api", "paused": False}]


async def test_concurrent_creates_never_pass_the_limit_on_schedules(clean_ledger: Any) -> None:
    """Twenty transactions at once, each holding its insert open a while before it commits:
    without the count's lock each would count the same few rows and all twenty would insert."""

    async def create(n: int) -> str:
        async with await psycopg.AsyncConnection.connect(clean_ledger.libpq_url, autocommit=True) as own:
            async with own.transaction():
                outcome = await ledger_schedules.insert_async(own, schedule(f"s{n}"), 5)
                await asyncio.sleep(0.05)
            return outcome

    outcomes = await asyncio.gather(*(create(n) for n in range(20)))
    assert sorted(outcomes) == ["full"] * 15 + ["inserted"] * 5
    async with await psycopg.AsyncConnection.connect(clean_ledger.libpq_url) as check:
        assert (await (await check.execute("SELECT count(*) FROM schedules")).fetchone()) == (5,)


async def test_a_full_ledger_refuses_a_new_schedule_and_a_taken_name_says_so_first(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    assert await ledger_schedules.insert_async(aconn, schedule("a"), 2) == "inserted"
    ledger_schedules.upsert_declared(conn, [schedule("app.tasks.b")])
    assert await ledger_schedules.insert_async(aconn, schedule("c"), 2) == "full", "declared ones count"
    assert await ledger_schedules.insert_async(aconn, schedule("a"), 2) == "name taken"
    assert await ledger_schedules.insert_async(aconn, schedule("c"), 3) == "inserted"


def test_declared_schedules_are_added_updated_and_an_operators_one_is_left_alone(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first_run = datetime.now(UTC) + timedelta(seconds=60)
    assert ledger_schedules.upsert_declared(conn, [schedule("app.tasks.a", next_run_at=first_run)]) == [
        "app.tasks.a"
    ]
    later = first_run + timedelta(hours=1)
    again = schedule("app.tasks.a", next_run_at=later)
    assert ledger_schedules.upsert_declared(conn, [again]) == [], "unchanged: not written again"
    changed_payload = schedule("app.tasks.a", next_run_at=later, payload_json='{"message": "new"}')
    assert ledger_schedules.upsert_declared(conn, [changed_payload]) == ["app.tasks.a"]
    kept = look.execute("SELECT payload, next_run_at FROM schedules").fetchone()
    assert kept == {"payload": {"message": "new"}, "next_run_at": first_run}, "same timing: same next run"
    ledger_schedules.upsert_declared(conn, [schedule("app.tasks.a", every=5, next_run_at=later)])
    assert look.execute("SELECT next_run_at FROM schedules").fetchone() == {"next_run_at": later}

    conn.execute("UPDATE schedules SET source = 'api' WHERE name = 'app.tasks.a'")
    assert ledger_schedules.upsert_declared(conn, [schedule("app.tasks.a", every=7, next_run_at=later)]) == []
    assert look.execute("SELECT every_seconds FROM schedules").fetchone() == {"every_seconds": 5}


async def test_due_schedules_are_taken_once_and_another_relay_skips_them(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    await ledger_schedules.insert_async(aconn, schedule("due", due_in=-1), LIMIT)
    await ledger_schedules.insert_async(aconn, schedule("later", due_in=60), LIMIT)
    await ledger_schedules.insert_async(aconn, schedule("paused", due_in=-1), LIMIT)
    assert await ledger_schedules.pause(aconn, "paused") is True
    with conn.transaction():
        [taken] = ledger_schedules.take_due(conn, 10)
        assert (taken.name, taken.payload_json, taken.every_seconds) == ("due", '{"message": "tick"}', 60)
        assert taken.now >= taken.next_run_at
        with second_connection(conn) as other, other.transaction():
            assert ledger_schedules.take_due(other, 10) == [], "locked by the first relay"


def test_a_tick_makes_one_job_however_many_relays_insert_it(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    tick = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    first = tick_job("every-minute", tick)
    assert ledger.insert(conn, [first]) == {first.id}
    with second_connection(conn) as other:
        assert ledger.insert(other, [tick_job("every-minute", tick)]) == set()
    following = tick_job("every-minute", tick + timedelta(minutes=1))
    other_schedule = tick_job("another", tick)
    assert ledger.insert(conn, [tick_job("every-minute", tick), following, other_schedule]) == {
        following.id,
        other_schedule.id,
    }
    made = look.execute(
        "SELECT schedule, scheduled_for, state FROM jobs WHERE id = %s", (first.id,)
    ).fetchone()
    assert made == {"schedule": "every-minute", "scheduled_for": tick, "state": "queued"}


async def test_firing_moves_a_schedule_to_its_next_tick_and_records_the_last(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    await ledger_schedules.insert_async(aconn, schedule("due", due_in=-1), LIMIT)
    fired, upcoming = datetime.now(UTC), datetime.now(UTC) + timedelta(seconds=30)
    ledger_schedules.advance(conn, [Advance("due", upcoming, fired)])
    ledger_schedules.advance(conn, [Advance("due", upcoming, None)])
    assert look.execute("SELECT next_run_at, last_run_at FROM schedules").fetchone() == {
        "next_run_at": upcoming,
        "last_run_at": fired,
    }
    wait = ledger_schedules.seconds_until_next_tick(conn)
    assert wait is not None
    assert 25 < wait <= 30


async def test_a_paused_schedule_resumes_from_the_given_tick_and_a_deleted_one_is_gone(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    await ledger_schedules.insert_async(aconn, schedule("s", due_in=-100), LIMIT)
    assert ledger_schedules.seconds_until_next_tick(conn) is not None
    await ledger_schedules.pause(aconn, "s")
    assert ledger_schedules.seconds_until_next_tick(conn) is None, "a paused schedule has no next tick"
    resume_at = datetime.now(UTC) + timedelta(seconds=10)
    assert await ledger_schedules.resume(aconn, "s", resume_at) is True
    assert look.execute("SELECT paused, next_run_at FROM schedules").fetchone() == {
        "paused": False,
        "next_run_at": resume_at,
    }
    assert await ledger_schedules.resume(aconn, "s", resume_at + timedelta(hours=1)) is True
    assert look.execute("SELECT next_run_at FROM schedules").fetchone() == {"next_run_at": resume_at}
    assert await ledger_schedules.delete(aconn, "s") is True
    assert await ledger_schedules.delete(aconn, "s") is False
    assert await ledger_schedules.pause(aconn, "s") is False
    assert await ledger_schedules.resume(aconn, "s", resume_at) is False


# -- retention ------------------------------------------------------------------------------


def test_finished_jobs_past_their_retention_are_pruned_with_their_attempts_and_artifacts(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    old, young = given(conn, "succeeded", attempts=1), given(conn, "succeeded", attempts=1)
    for job_id in (old, young):
        conn.execute(
            "INSERT INTO job_attempts (job_id, run, attempt, outcome) VALUES (%s, 1, 1, 'succeeded')",
            (job_id,),
        )
        writer = artifacts.ArtifactWriter(conn, job_id, "a.csv", "text/csv")
        writer.write(b"x")
        writer.close()
    age(conn, old, finished=3600)
    old_dead = given(conn, "dead")
    age(conn, old_dead, finished=3600)
    assert retention.prune_jobs(conn, "succeeded", 600, 1000) == 1
    assert not exists(look, old)
    assert attempts(look, old) == []
    assert look.execute("SELECT count(*) AS n FROM job_artifacts WHERE job_id = %s", (old,)).fetchone() == {
        "n": 0
    }
    pieces = look.execute("SELECT count(*) AS n FROM job_artifact_chunks WHERE job_id = %s", (old,))
    assert pieces.fetchone() == {"n": 0}
    assert exists(look, young)
    assert exists(look, old_dead), "another state, another retention"


def test_an_unfinished_job_is_never_pruned(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    unfinished = [given(conn, state, attempts=1) for state in ("queued", "running", "retrying")]
    for job_id in unfinished:  # even with a finished_at from an earlier run
        age(conn, job_id, finished=10 * DAY)
    for state in ("succeeded", "dead", "cancelled"):
        assert retention.prune_jobs(conn, state, 1, 1000) == 0
    assert all(exists(look, job_id) for job_id in unfinished)
    with pytest.raises(ValueError, match="only finished jobs"):
        retention.prune_jobs(conn, "queued", 1, 1000)


def test_pruning_goes_oldest_first_in_batches_and_skips_rows_another_relay_holds(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    jobs = [given(conn, "cancelled") for _ in range(5)]
    for seconds, job_id in zip((500, 400, 300, 200, 100), jobs, strict=True):
        age(conn, job_id, finished=seconds)
    assert retention.count_prunable(conn, "cancelled", 50) == 5
    assert retention.prune_jobs(conn, "cancelled", 50, 2) == 2
    assert [exists(look, j) for j in jobs] == [False, False, True, True, True]
    with conn.transaction():
        conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (jobs[2],))
        with second_connection(conn) as other:
            assert retention.prune_jobs(other, "cancelled", 50, 10) == 2
    assert [exists(look, j) for j in jobs[2:]] == [True, False, False]


def test_a_pruned_dead_job_whose_copy_may_still_be_queued_is_recorded_as_stale(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    published, unpublished = given(conn, "dead", published=True), given(conn, "dead")
    for job_id in (published, unpublished):
        age(conn, job_id, finished=3600)
    assert retention.prune_jobs(conn, "dead", 60, 1000, record_stale=True) == 2
    stale = look.execute("SELECT queue, job_id, run FROM stale_dead_letters").fetchall()
    assert stale == [{"queue": "default", "job_id": published, "run": 1}]


def test_idempotency_keys_past_their_window_are_released_and_younger_ones_kept(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    old, young = keyed(conn, "old-key", 2 * DAY), keyed(conn, "young-key", 60)
    assert retention.release_expired_keys(conn, DAY, 1000) == 1
    assert (key_of(look, old), key_of(look, young)) == (None, "young-key")
    assert exists(look, old), "the job stays; only its key is freed"


async def test_accepting_releases_one_expired_key_and_never_a_key_inside_its_window(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    old, young = keyed(conn, "old-key", 2 * DAY), keyed(conn, "young-key", 60)
    holder = await ledger.key_holder_async(aconn, "old-key", None, DAY)
    assert holder is not None
    assert holder.expired is True
    assert await ledger.release_key_async(aconn, "young-key", None, DAY) is False
    assert await ledger.release_key_async(aconn, "old-key", "another-client", DAY) is False, (
        "a key belongs to its client: another client's release leaves it"
    )
    assert await ledger.release_key_async(aconn, "old-key", None, DAY) is True
    assert (key_of(look, old), key_of(look, young)) == (None, "young-key")


def test_workers_and_relays_long_silent_are_forgotten(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    for table in ("workers", "relays"):
        conn.execute(
            f"INSERT INTO {table} (id, host, pid, last_seen)"
            " VALUES ('gone', 'h', 1, now() - interval '2 days')"
        )
        conn.execute(f"INSERT INTO {table} (id, host, pid) VALUES ('alive', 'h', 2)")
    assert retention.prune_workers(conn, DAY) == 1
    assert retention.prune_relays(conn, DAY) == 1
    for table in ("workers", "relays"):
        assert look.execute(f"SELECT id FROM {table}").fetchall() == [{"id": "alive"}]
