"""What access writes: the generated pepper (stored once, whoever races), dashboard sessions
(opened for live keys only, found while live, ended by sign-out, revocation or pruning), and
legacy key hashes re-hashed once."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import psycopg
import pytest

from app.ledger import keys, retention, sessions
from app.ledger import secrets as generated
from tests.support.infra import Infra

pytestmark = pytest.mark.anyio


def a_key(conn: psycopg.Connection[Any], scheme: str = "v2") -> str:
    key_id = secrets.token_hex(6)
    assert keys.insert(conn, key_id, f"key-{key_id}", "hash", ["read"])
    conn.execute("UPDATE api_keys SET hash_scheme = %s WHERE id = %s", (scheme, key_id))
    return key_id


def a_secret_name() -> str:
    return f"test-{secrets.token_hex(4)}"


def test_a_secret_is_stored_by_the_first_process_and_read_by_every_other(
    conn: psycopg.Connection[Any],
) -> None:
    name = a_secret_name()
    assert generated.get_or_create(conn, name, "first") == ("first", False)
    assert generated.get_or_create(conn, name, "second") == ("first", True)


def test_two_processes_racing_to_store_a_secret_both_get_the_winners(clean_ledger: Infra) -> None:
    """The second insert waits for the first transaction and then reads what it committed."""
    name = a_secret_name()
    got: list[tuple[str, bool]] = []
    with psycopg.connect(clean_ledger.libpq_url) as first:
        assert generated.get_or_create(first, name, "winner") == ("winner", False)  # not committed yet

        def second() -> None:
            with psycopg.connect(clean_ledger.libpq_url) as other:
                got.append(generated.get_or_create(other, name, "loser"))

        racer = threading.Thread(target=second)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the second insert waits for the first transaction"
        first.commit()
        racer.join(10)
    assert got == [("winner", True)]


async def test_a_session_opens_for_a_live_key_and_is_found_until_it_ends(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    key_id = a_key(conn)
    assert await sessions.insert_async(aconn, "h1", key_id, 3600, "192.0.2.1")
    found = await sessions.find_async(aconn, "h1")
    assert found is not None
    assert (found.id, found.scopes) == (key_id, ("read",))
    assert await sessions.find_async(aconn, "h2") is None
    assert await sessions.delete_async(aconn, "h1") == (key_id, f"key-{key_id}")
    assert await sessions.find_async(aconn, "h1") is None
    assert await sessions.delete_async(aconn, "h1") is None


async def test_no_session_opens_for_a_revoked_or_unknown_key_and_revoking_ends_them(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    key_id, other = a_key(conn), a_key(conn)
    assert await sessions.insert_async(aconn, "mine", key_id, 3600, None)
    assert await sessions.insert_async(aconn, "theirs", other, 3600, None)
    assert not await sessions.insert_async(aconn, "nobody", "000000000000", 3600, None)
    assert keys.revoke(conn, f"key-{key_id}")
    assert conn.execute("SELECT id_hash FROM dashboard_sessions").fetchall() == [("theirs",)]
    assert not await sessions.insert_async(aconn, "again", key_id, 3600, None)


async def test_an_expired_session_is_not_found_and_pruning_deletes_only_expired_ones(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    key_id = a_key(conn)
    for id_hash in ("old-1", "old-2", "live"):
        assert await sessions.insert_async(aconn, id_hash, key_id, 3600, None)
    conn.execute(
        "UPDATE dashboard_sessions SET expires_at = now() - interval '1 s' WHERE id_hash LIKE 'old-%'"
    )
    assert await sessions.find_async(aconn, "old-1") is None
    assert retention.prune_sessions(conn, limit=1) == 1
    assert retention.prune_sessions(conn, limit=10) == 1
    assert conn.execute("SELECT id_hash FROM dashboard_sessions").fetchall() == [("live",)]


async def test_a_legacy_hash_is_replaced_once_and_the_key_is_legacy_no_more(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    key_id = a_key(conn, scheme="legacy")
    found = await keys.find_async(aconn, key_id)
    assert found is not None
    assert found.legacy
    await keys.rehash_async(aconn, key_id, "new-hash")
    await keys.rehash_async(aconn, key_id, "ignored: no longer legacy")
    found = await keys.find_async(aconn, key_id)
    assert found is not None
    assert (found.secret_hash, found.legacy) == ("new-hash", False)
