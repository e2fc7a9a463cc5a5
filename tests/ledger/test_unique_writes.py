"""What the ledger does with unique keys: `insert_jobs` leaves a held key's row out, and
`find_unique_holders` names the in-flight job that holds it, with its state."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from app.ledger import jobs as ledger
from app.ledger.jobs import NewJob
from app.ledger.unique import Holder, holders
from tests.ledger.rows import exists, second_connection

SYNC = "app.tasks.example.sync_account"


def keyed(key: str | None, task: str = SYNC) -> NewJob:
    return NewJob(task, "default", '{"account": "a", "seconds": 0}', 3, unique_key=key)


def test_of_two_rows_with_one_key_in_one_insert_the_first_is_stored_and_holds_it(
    conn: psycopg.Connection[Any],
) -> None:
    first, second, free = keyed("key:a"), keyed("key:a"), keyed(None)
    assert ledger.insert(conn, [first, second, free]) == {first.id, free.id}
    assert holders(conn, [second, free]) == {second.id: Holder(first.id, "queued")}


def test_the_holder_is_named_with_its_state(conn: psycopg.Connection[Any]) -> None:
    first = keyed("key:a")
    ledger.insert(conn, [first])
    conn.execute("UPDATE jobs SET state = 'running' WHERE id = %s", (first.id,))
    again = keyed("key:a")
    assert ledger.insert(conn, [again]) == set()
    assert holders(conn, [again]) == {again.id: Holder(first.id, "running")}


def test_a_key_of_one_policy_never_holds_back_the_same_value_of_the_other(
    conn: psycopg.Connection[Any],
) -> None:
    rows = [keyed("key:a"), keyed("client:a"), keyed("key:client:a")]
    assert ledger.insert(conn, rows) == {row.id for row in rows}


def test_a_row_inserted_in_a_transaction_that_rolled_back_holds_nothing(
    conn: psycopg.Connection[Any],
) -> None:
    rolled_back = keyed("key:a")
    with conn.transaction(force_rollback=True):
        assert ledger.insert(conn, [rolled_back]) == {rolled_back.id}
    assert not exists(conn, rolled_back.id)
    after = keyed("key:a")
    assert ledger.insert(conn, [after]) == {after.id}


@pytest.mark.parametrize(("ending", "stored"), [("rollback", True), ("commit", False)])
def test_an_insert_of_a_key_whose_holder_is_uncommitted_waits_for_its_end(
    conn: psycopg.Connection[Any], ending: str, stored: bool
) -> None:
    holder, waiting = keyed("key:a"), keyed("key:a")
    outcome: list[set[Any]] = []
    with second_connection(conn) as other:
        other.execute("BEGIN")
        ledger.insert(other, [holder])
        inserting = threading.Thread(target=lambda: outcome.append(ledger.insert(conn, [waiting])))
        inserting.start()
        inserting.join(0.3)
        assert inserting.is_alive(), "the second insert waits for the first transaction"
        other.execute(ending.upper())
        inserting.join(5)
    assert outcome == [{waiting.id} if stored else set()]
    if not stored:
        assert holders(conn, [waiting]) == {waiting.id: Holder(holder.id, "queued")}
