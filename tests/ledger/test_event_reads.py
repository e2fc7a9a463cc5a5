"""Reading the event log: in commit order, none skipped and none repeated, whatever order the
writers commit in; a transaction of another database never holds the readers back."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from app.errors import InvalidCursor
from app.ledger import events, queries
from app.ledger import jobs as ledger
from app.ledger.connections import own_connection
from app.ledger.event_schema import PUBLISH_APPLICATION_NAME
from app.ledger.events import Cursor, EventFilter
from app.ledger.jobs import NewJob
from tests.ledger.rows import second_connection
from tests.support.infra import Infra

pytestmark = pytest.mark.anyio
ECHO = "app.tasks.example.echo"


def new_job(task: str = ECHO, client_id: str | None = None) -> NewJob:
    return NewJob(task=task, queue="default", payload_json="{}", max_attempts=3, client_id=client_id)


def naive_read(look: psycopg.Connection[Any], after_id: int) -> list[int]:
    """What a reader following the log by id alone would take."""
    return [r[0] for r in look.execute("SELECT id FROM job_events WHERE id > %s ORDER BY id", (after_id,))]


async def test_an_event_whose_transaction_commits_after_a_later_one_is_not_skipped(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    """Given two writers, the one that logged first (the smaller id) committing last: a reader by
    id alone skips its event for good; the reader by (xid, id) below the horizon does not."""
    start = await events.head(aconn)
    slow, fast = new_job(), new_job()
    with second_connection(conn) as other:
        with other.transaction():
            ledger.insert(other, [slow])  # the smaller id, and the smaller xid
            ledger.insert(conn, [fast])  # commits at once, with the larger id
            naive_seen = naive_read(conn, 0)
            exact_first = await events.read(aconn, start)
        naive_after = naive_read(conn, max(naive_seen))
        exact_then = await events.read(aconn, exact_first.next)

    assert len(naive_seen) == 1
    assert naive_after == [], "the naive cursor skipped the slow writer's event for good"
    assert exact_first.events == [], "nothing is readable while the older writer is open"
    assert [e.job_id for e in exact_then.events] == [slow.id, fast.id]
    assert (await events.read(aconn, exact_then.next)).events == [], "and nothing is read twice"


async def test_a_long_transaction_of_this_database_holds_the_horizon_and_one_of_another_does_not(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any], clean_ledger: Infra
) -> None:
    start = await events.head(aconn)
    elsewhere_url = clean_ledger.libpq_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(elsewhere_url) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")  # holds an xid, in another database
        job = new_job()
        ledger.insert(conn, [job])
        page = await events.read(aconn, start)
        assert [e.job_id for e in page.events] == [job.id], "another database's transaction is no writer here"
        elsewhere.rollback()

    with second_connection(conn) as here:
        here.execute("BEGIN")
        here.execute("SELECT pg_current_xact_id()")  # an xid of this database, open
        later = new_job()
        ledger.insert(conn, [later])
        held = await events.read(aconn, page.next)
        assert held.events == [], "an open transaction here could still write before it"
        here.execute("COMMIT")
    assert [e.job_id for e in (await events.read(aconn, page.next)).events] == [later.id]


async def test_the_relays_publishing_transaction_holds_no_follower_back_and_can_write_no_event(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    """The relay keeps its take open until the broker confirms; the horizon passes over it,
    which is exact only because a connection under its name can never write an event."""
    first = new_job()
    ledger.insert(conn, [first])
    start = (await events.read(aconn, await events.head(aconn))).next
    with own_connection(conn.info.dsn, PUBLISH_APPLICATION_NAME) as publishing:
        with publishing.transaction():
            assert [job.id for job in ledger.take_publishable(publishing, 10)] == [first.id]  # holds an xid
            later = new_job()
            ledger.insert(conn, [later])
            page = await events.read(aconn, start)
            assert [e.job_id for e in page.events] == [later.id], "the publishing transaction held it back"
        with pytest.raises(psycopg.errors.RaiseException, match="writes no events"):
            ledger.insert(publishing, [new_job()])


def test_the_horizon_is_one_function_that_reads_in_its_callers_snapshot(
    conn: psycopg.Connection[Any],
) -> None:
    """Both readers of the log take the horizon from `event_horizon()`, which is STABLE: a
    VOLATILE one would take a snapshot newer than the one its caller reads the log in."""
    for statement in (queries.READ_EVENTS, queries.FAN_OUT_EVENTS):
        assert "event_horizon()" in statement
        assert "pg_snapshot_xip" not in statement, "the horizon is written once, in the function"
    volatility = conn.execute("SELECT provolatile FROM pg_proc WHERE proname = 'event_horizon'").fetchall()
    assert volatility == [("s",)]


async def test_pages_follow_each_other_and_filters_choose_the_events(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    start = await events.head(aconn)
    mine = [new_job(client_id="key-a") for _ in range(5)]
    theirs = [new_job(task="app.tasks.example.flaky", client_id="key-b") for _ in range(3)]
    for job in mine + theirs:
        ledger.insert(conn, [job])
    seen, cursor = [], start
    while True:
        page = await events.read(aconn, cursor, limit=3)
        seen += [e.job_id for e in page.events]
        cursor = page.next
        if not page.full:
            break
    assert seen == [j.id for j in mine + theirs]

    by_client = await events.read(aconn, start, EventFilter(client_id="key-a"))
    assert [e.job_id for e in by_client.events] == [j.id for j in mine]
    by_task = await events.read(aconn, start, EventFilter(task="app.tasks.example.flaky"))
    assert [e.job_id for e in by_task.events] == [j.id for j in theirs]
    by_job = await events.read(aconn, start, EventFilter(job_id=mine[2].id))
    assert [e.job_id for e in by_job.events] == [mine[2].id]
    assert all(EventFilter(client_id="key-a").matches(e) for e in by_client.events)


async def test_a_cursor_is_what_the_stream_gives_out_and_nothing_else(
    aconn: psycopg.AsyncConnection[Any],
) -> None:
    assert Cursor.parse("12-34") == Cursor(12, 34)
    assert str(Cursor(12, 34)) == "12-34"
    for bad in ("", "12", "a-1", "1-2-3", "-1-2", f"{2**63}-1", "1-" + "9" * 30):
        with pytest.raises(InvalidCursor):
            Cursor.parse(bad)
    assert await events.exists(aconn, Cursor(1, 1)) is False


def test_pruning_removes_old_events_from_the_front_of_the_log_only(conn: psycopg.Connection[Any]) -> None:
    """What is kept is always everything after some event: an old event behind a young one stays
    until the young one goes, so a kept cursor never has a gap after it."""
    from app.ledger import retention

    jobs = [new_job() for _ in range(4)]
    for job in jobs:
        ledger.insert(conn, [job])
    old = [jobs[0].id, jobs[1].id, jobs[3].id]  # the third is young: the fourth waits behind it
    conn.execute("UPDATE job_events SET at = now() - interval '2 days' WHERE job_id = ANY(%s)", (old,))
    assert retention.prune_events(conn, 86_400, 1000) == 2
    left = [r[0] for r in conn.execute("SELECT job_id FROM job_events ORDER BY xid, id")]
    assert left == [jobs[2].id, jobs[3].id]
    assert retention.count_prunable_events(conn, 86_400) == 1
    assert retention.prune_events(conn, 0, 1) == 1, "a limit of one deletes one"


async def test_a_read_with_jobs_carries_each_jobs_row_in_the_same_statement_and_its_view(
    aconn: psycopg.AsyncConnection[Any], conn: psycopg.Connection[Any]
) -> None:
    """The followers' job views come with the events (one statement, one snapshot), and the view
    built from the row is the API's job view (`job_view(...).model_dump(mode="json")`)."""
    from types import SimpleNamespace

    from app.operate.views import job_view, job_view_data

    start = await events.head(aconn)
    keyed = NewJob(
        task=ECHO, queue="default", payload_json='{"message": "hi"}', max_attempts=3, unique_key="key:acct-1"
    )
    plain, gone = new_job(client_id="key-a"), new_job()
    ledger.insert(conn, [keyed, plain, gone])
    conn.execute(
        "UPDATE jobs SET state = 'retrying', attempts = 1, started_at = now() WHERE id = %s", (plain.id,)
    )
    conn.execute("DELETE FROM jobs WHERE id = %s", (gone.id,))
    bare = await events.read(aconn, start)
    assert [e.job_id for e in bare.events] == [keyed.id, plain.id, gone.id]
    assert bare.jobs == {}, "the jobs only when asked"
    page = await events.read(aconn, start, jobs=True)
    assert page.events == bare.events
    assert set(page.jobs) == {keyed.id, plain.id}, "a job already pruned is left out"
    for job_id, row in page.jobs.items():
        assert row["id"] == job_id
        assert job_view_data(row) == job_view(SimpleNamespace(**row)).model_dump(mode="json")  # type: ignore[arg-type]
    assert job_view_data(page.jobs[plain.id])["next_retry_at"] is not None
    assert job_view_data(page.jobs[keyed.id])["unique_key"] == "acct-1"
