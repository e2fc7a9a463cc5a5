"""What accepting and operating write: new jobs (with idempotency keys), cancel, replay, discard."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from app.ledger import cancels
from app.ledger import jobs as ledger
from app.ledger.jobs import NewJob
from app.ledger.unique import Holder, holders_async
from tests.ledger.rows import attempts, exists, given, row, second_connection
from tests.support.infra import Infra

pytestmark = pytest.mark.anyio

DAY = 86_400.0


def new(key: str | None = None, delay: float = 0.0) -> NewJob:
    return NewJob(
        "app.tasks.example.echo", "default", '{"message": "hi"}', 5, delay_seconds=delay, idempotency_key=key
    )


async def test_new_jobs_are_inserted_queued_many_in_one_statement(
    aconn: psycopg.AsyncConnection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    jobs = [new(), new(delay=60)]
    assert await ledger.insert_async(aconn, jobs) == {job.id for job in jobs}
    assert (row(look, jobs[0].id)["state"], row(look, jobs[0].id)["delayed"]) == ("queued", False)
    assert row(look, jobs[1].id)["delayed"] is True


async def test_a_job_whose_idempotency_key_is_taken_is_left_out_and_the_holder_is_found(
    aconn: psycopg.AsyncConnection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first, again, other = new("order-1"), new("order-1"), new("order-2")
    assert await ledger.insert_async(aconn, [first]) == {first.id}
    assert await ledger.insert_async(aconn, [again, other]) == {other.id}
    assert not exists(look, again.id)
    holder = await ledger.key_holder_async(aconn, "order-1", None, DAY)
    assert holder is not None
    assert (holder.id, holder.state, holder.expired) == (first.id, "queued", False)
    assert await ledger.key_holder_async(aconn, "never-used", None, DAY) is None


def wakes(listener: psycopg.Connection[Any]) -> int:
    """How many relay wake-ups the listener has received since it last looked."""
    return sum(1 for _ in listener.notifies(timeout=0.2, stop_after=10))


def unique(key: str, task: str = "app.tasks.example.export_jobs") -> NewJob:
    return NewJob(task, "exports", "{}", 3, unique_key=key)


async def test_a_job_whose_unique_key_an_in_flight_job_holds_is_left_out_alone_and_its_holder_named(
    aconn: psycopg.AsyncConnection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    first = unique("client:a")
    assert await ledger.insert_async(aconn, [first]) == {first.id}
    again, other_client, other_task = unique("client:a"), unique("client:b"), unique("client:a", "t.other")
    batch = [again, other_client, other_task, new()]
    assert await ledger.insert_async(aconn, batch) == {job.id for job in batch} - {again.id}
    assert await holders_async(aconn, [again, other_client, batch[3]]) == {
        again.id: Holder(first.id, "queued")
    }
    assert row(look, first.id)["state"] == "queued"


@pytest.mark.parametrize("state", ["queued", "retrying", "running"])
async def test_a_unique_key_is_held_while_its_job_is_in_flight(
    aconn: psycopg.AsyncConnection[Any], state: str
) -> None:
    first = unique("client:a")
    await ledger.insert_async(aconn, [first])
    await aconn.execute("UPDATE jobs SET state = %s WHERE id = %s", (state, first.id))
    again = unique("client:a")
    assert await ledger.insert_async(aconn, [again]) == set()
    assert await holders_async(aconn, [again]) == {again.id: Holder(first.id, state)}


@pytest.mark.parametrize("state", ["succeeded", "dead", "cancelled"])
async def test_a_unique_key_is_free_again_once_its_job_has_finished(
    aconn: psycopg.AsyncConnection[Any], state: str
) -> None:
    first = unique("client:a")
    await ledger.insert_async(aconn, [first])
    await aconn.execute("UPDATE jobs SET state = %s WHERE id = %s", (state, first.id))
    again = unique("client:a")
    assert await ledger.insert_async(aconn, [again]) == {again.id}


async def test_an_insert_wakes_the_relay_at_its_commit_only_when_asked_and_only_for_a_new_row(
    aconn: psycopg.AsyncConnection[Any], clean_ledger: Infra
) -> None:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as listener:
        listener.execute("LISTEN conveyor_jobs")
        await ledger.insert_async(aconn, [new(), new()], notify=True)
        assert wakes(listener) == 1, "one wake-up per statement, not per row"
        await ledger.insert_async(aconn, [new()])
        assert wakes(listener) == 0, "the relay sweeps for rows inserted without one"
        await ledger.insert_async(aconn, [new("taken")], notify=True)
        assert wakes(listener) == 1
        assert await ledger.insert_async(aconn, [new("taken")], notify=True) == set()
        assert wakes(listener) == 0, "nothing inserted, nothing to publish"
        async with aconn.transaction():
            await ledger.insert_async(aconn, [new()], notify=True)
            assert wakes(listener) == 0, "not before the commit"
        assert wakes(listener) == 1


async def test_a_job_that_has_not_started_can_be_cancelled_and_no_other(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    queued, retrying = given(conn, "queued"), given(conn, "retrying", attempts=1)
    others = [given(conn, "running", attempts=1), given(conn, "succeeded"), given(conn, "dead")]
    assert await cancels.cancel(aconn, queued) is True
    assert await cancels.cancel(aconn, retrying) is True
    assert [await cancels.cancel(aconn, job_id) for job_id in others] == [False, False, False]
    assert (row(look, queued)["state"], row(look, retrying)["state"]) == ("cancelled", "cancelled")
    assert row(look, queued)["finished_at"] is not None
    assert [row(look, job_id)["state"] for job_id in others] == ["running", "succeeded", "dead"]


async def test_a_replay_starts_a_new_run_of_a_dead_job_and_keeps_its_history(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    dead = given(conn, "dead", attempts=3, published=True)
    conn.execute(
        "INSERT INTO job_attempts (job_id, run, attempt, outcome) VALUES (%s, 1, 3, 'dead')", (dead,)
    )
    alive = given(conn, "queued")
    [replayed] = await ledger.replay_dead(aconn, ids=[dead, alive], limit=10)
    assert (replayed.id, replayed.queue, replayed.run) == (dead, "default", 1), "names the dead run"
    after = row(look, dead)
    assert (after["state"], after["run"], after["attempts"], after["published_at"]) == ("queued", 2, 0, None)
    assert after["finished_at"] is None
    assert after["last_error"] is None
    assert [a["outcome"] for a in attempts(look, dead)] == ["dead"], "history kept"
    assert row(look, alive)["run"] == 1
    assert stale_copies(look) == [("default", dead, 1)], "the dead run's copy is stale now"


async def test_a_replay_of_a_job_whose_copy_never_went_out_records_no_stale_copy(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    dead = given(conn, "dead", attempts=3, published=False)
    assert [run.id for run in await ledger.replay_dead(aconn, ids=[dead], limit=1)] == [dead]
    assert stale_copies(look) == []


async def test_the_recorded_stale_copies_are_taken_once_and_forgotten(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    dead = [given(conn, "dead", published=True) for _ in range(3)]
    await ledger.replay_dead(aconn, ids=dead, limit=10)
    with conn.transaction():
        taken = ledger.take_stale_copies(conn, 2)
        with second_connection(conn) as other, other.transaction():
            assert len(ledger.take_stale_copies(other, 10)) == 1, "another relay takes the rest"
        ledger.forget_stale_copies(conn, [copy.id for copy in taken])
    assert len(ledger.take_stale_copies(conn, 10)) == 1


async def test_bulk_replay_takes_one_tasks_dead_jobs_oldest_first_up_to_the_limit(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    flaky = [given(conn, "dead", task="app.tasks.example.flaky") for _ in range(3)]
    given(conn, "dead")
    replayed = await ledger.replay_dead(aconn, task="app.tasks.example.flaky", limit=2)
    assert {run.id for run in replayed} == set(flaky[:2])


async def test_a_discard_deletes_a_dead_job_with_its_history_and_nothing_else(
    aconn: psycopg.AsyncConnection[Any],
    conn: psycopg.Connection[Any],
    look: psycopg.Connection[dict[str, Any]],
) -> None:
    dead = given(conn, "dead", attempts=1, run=2)
    conn.execute(
        "INSERT INTO job_attempts (job_id, run, attempt, outcome) VALUES (%s, 2, 1, 'dead')", (dead,)
    )
    alive = given(conn, "queued")
    [discarded] = await ledger.discard_dead(aconn, ids=[dead, alive], limit=10)
    assert (discarded.id, discarded.run) == (dead, 2)
    assert not exists(look, dead)
    assert stale_copies(look) == [], "its copy never went out"
    assert attempts(look, dead) == []
    assert exists(look, alive)


async def test_the_state_of_a_job_is_read_or_none_when_it_is_gone(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    job_id = given(conn, "retrying", attempts=1)
    assert await ledger.job_state(aconn, job_id) == "retrying"
    await ledger.discard_dead(aconn, ids=[job_id], limit=1)
    assert await ledger.job_state(aconn, job_id) == "retrying", "only dead jobs are discarded"
    conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
    assert await ledger.job_state(aconn, job_id) is None


def stale_copies(look: psycopg.Connection[dict[str, Any]]) -> list[tuple[str, Any, int]]:
    rows = look.execute("SELECT queue, job_id, run FROM stale_dead_letters ORDER BY id").fetchall()
    return [(r["queue"], r["job_id"], r["run"]) for r in rows]
