"""The relay's take of jobs with limits, woken by the slots that successes free: it visits the
keys those successes named, and every key when anything else rang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

from app.ledger import jobs as ledger
from app.relay.outbox import LIMITED_TAKE_SPACING_SECONDS, Relay, _listen
from app.settings import get_settings
from tests.ledger.rows import given
from tests.support.infra import Infra

REPORT = "app.tasks.example.tenant_report"


@pytest.fixture
def conn(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as connection:
        yield connection


def limited(conn: psycopg.Connection[Any], state: str, key: str) -> UUID:
    """A job of a task with one slot per key (`concurrency=1`), in `state`."""
    job_id = given(conn, state, task=REPORT, attempts=1 if state == "running" else 0, due_in=-1)
    conn.execute("UPDATE jobs SET concurrency_key = %s, concurrency_limit = 1 WHERE id = %s", (key, job_id))
    return job_id


def published(conn: psycopg.Connection[Any], *ids: UUID) -> list[bool]:
    rows = dict(
        conn.execute("SELECT id, published_at IS NOT NULL FROM jobs WHERE id = ANY(%s)", (list(ids),))
    )
    return [rows[job_id] for job_id in ids]


def test_a_freed_slot_sends_its_keys_next_job_and_visits_no_other_key(conn: psycopg.Connection[Any]) -> None:
    settings = get_settings()
    relay, listener = Relay(settings), _listen(settings)
    try:
        running = {key: limited(conn, "running", key) for key in ("a", "b")}
        waiting = {key: limited(conn, "queued", key) for key in ("a", "b")}
        assert relay.publish_due() == 0, "both keys' slots are taken"
        conn.execute("UPDATE jobs SET state = 'succeeded' WHERE id = %s", (running["b"],))  # rings nobody
        ledger.succeed(conn, [(ledger.Token(running["a"], 1, 1), "{}")])
        assert relay._wait(listener, 5.0) is False, "only a freed slot rang"
        relay.publish_due(plain=False)
        assert published(conn, waiting["a"], waiting["b"]) == [True, False], "the key named, only"
        conn.execute("SELECT pg_notify('conveyor_jobs', '')")  # a new job, of any key
        assert relay._wait(listener, 5.0) is True
        # Takes of jobs with limits are spaced (a take within the spacing is owed, not lost: the
        # relay's loop comes back for it); this one is asked for once the spacing has passed.
        time.sleep(LIMITED_TAKE_SPACING_SECONDS * 2)
        relay.publish_due(plain=True)
        assert published(conn, waiting["b"]) == [True], "then every key is visited"
    finally:
        listener.close()
        relay.publisher.close()
        relay._forget_ledger()


def test_slots_freed_one_by_one_within_the_spacing_are_served_by_one_take(
    conn: psycopg.Connection[Any],
) -> None:
    settings = get_settings()
    relay, listener = Relay(settings), _listen(settings)
    try:
        keys = [f"k{i:02d}" for i in range(20)]
        running = [limited(conn, "running", key) for key in keys]
        waiting = [limited(conn, "queued", key) for key in keys]
        assert relay.publish_due() == 0, "every key's slot is taken"
        relay._limited_after = time.monotonic() + 1.0  # a take just ran: the next one waits
        for job_id in running:  # 20 successes, 20 transactions, 20 NOTIFYs
            ledger.succeed(conn, [(ledger.Token(job_id, 1, 1), "{}")])
        assert relay._wait(listener, 5.0) is False, "only freed slots rang"
        assert time.monotonic() >= relay._limited_after, "the relay woke once the spacing had passed"
        assert relay._freed == {(REPORT, key) for key in keys}
        assert relay.publish_due(plain=False) == 20
        takes = conn.execute(
            "SELECT count(DISTINCT published_at) FROM jobs WHERE id = ANY(%s)", (waiting,)
        ).fetchone()
        assert takes == (1,), "the 20 freed slots are served by one take (one transaction)"
    finally:
        listener.close()
        relay.publisher.close()
        relay._forget_ledger()


def test_the_relay_reads_every_key_a_success_named_in_one_payload() -> None:
    relay = Relay(get_settings())
    relay._freed, relay._every_key = set(), False
    payload = f"slot:{REPORT}\x1fa\x1e{REPORT}\x1fb\x1fc\x1eother.task\x1f"
    assert relay._slots_freed({payload}) is True, "only freed slots"
    assert relay._freed == {(REPORT, "a"), (REPORT, "b\x1fc"), ("other.task", "")}
    assert relay._every_key is False, "named keys only: the take visits just them"
    assert relay._slots_freed({"slot", payload}) is True
    assert relay._every_key is True, "a bare 'slot': every key"
    assert relay._slots_freed({""}) is False, "a new job: not only freed slots"
