"""What the audit log writes: an entry in the caller's transaction (gone when it rolls back),
pages newest first by id with filters, and entries pruned by age, never a young one.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from app.ledger import audit
from app.ledger.audit import NewEntry

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def empty_log(conn: psycopg.Connection[Any]) -> None:
    conn.execute("TRUNCATE audit_log")


def entry(action: str = "job.replay", key_name: str = "ops", **fields: Any) -> NewEntry:
    return NewEntry(key_id="0123456789ab", key_name=key_name, action=action, **fields)


def test_an_entry_is_stored_with_every_field_and_its_detail_as_json(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    written = entry(
        target="nightly",
        count=3,
        request_id="req-1",
        client_address="10.0.0.7",
        detail={"task": "app.tasks.example.echo", "queues": {"default": 2}},
    )
    entry_id = audit.insert(conn, written)
    row = look.execute("SELECT * FROM audit_log WHERE id = %s", (entry_id,)).fetchone()
    assert row is not None
    assert {k: v for k, v in row.items() if k not in {"id", "at"}} == {
        "key_id": "0123456789ab",
        "key_name": "ops",
        "action": "job.replay",
        "target": "nightly",
        "count": 3,
        "request_id": "req-1",
        "client_address": "10.0.0.7",
        "detail": {"task": "app.tasks.example.echo", "queues": {"default": 2}},
    }


def test_an_entry_written_in_a_transaction_that_rolls_back_is_not_kept(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    def failing_action() -> None:
        with conn.transaction():
            audit.insert(conn, entry())
            raise RuntimeError("the action failed")

    with pytest.raises(RuntimeError):
        failing_action()
    assert look.execute("SELECT count(*) AS n FROM audit_log").fetchone() == {"n": 0}


async def test_pages_run_newest_first_by_id_and_filter_by_action_and_key(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    ids = [
        audit.insert(conn, entry(f"job.{verb}", key)) for verb, key in [("replay", "a"), ("cancel", "b")] * 3
    ]
    first = await audit.page_async(aconn, limit=4)
    assert [e.id for e in first] == ids[::-1][:4]
    rest = await audit.page_async(aconn, before=first[-1].id, limit=4)
    assert [e.id for e in rest] == ids[::-1][4:]
    replays = await audit.page_async(aconn, action="job.replay", limit=10)
    assert [e.id for e in replays] == ids[::2][::-1]
    by_b = await audit.page_async(aconn, key_name="b", limit=10)
    assert [e.key_name for e in by_b] == ["b"] * 3
    assert await audit.page_async(aconn, action="job.replay", key_name="b", limit=10) == []


def test_pruning_deletes_only_entries_older_than_the_retention_in_batches(
    conn: psycopg.Connection[Any], look: psycopg.Connection[dict[str, Any]]
) -> None:
    for _ in range(5):
        audit.insert(conn, entry())
    conn.execute(
        "UPDATE audit_log SET at = now() - interval '10 days' WHERE id IN (SELECT id FROM audit_log LIMIT 3)"
    )
    assert audit.count_prunable(conn, 86_400 * 9) == 3
    assert audit.prune(conn, 86_400 * 9, limit=2) == 2
    assert audit.prune(conn, 86_400 * 9, limit=2) == 1
    assert audit.prune(conn, 86_400 * 9, limit=2) == 0
    assert look.execute("SELECT count(*) AS n FROM audit_log").fetchone() == {"n": 2}
