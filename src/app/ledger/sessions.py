"""The dashboard_sessions table: a sign-in is a row, found by the SHA-256 of its cookie's value.

Signing out deletes the row, revoking the key deletes its rows (see `keys.revoke`), and the
relay's pruning deletes expired ones; a lookup checks the expiry and the key itself, so none
of the three has to win a race to end a session.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.ledger import queries
from app.ledger.connections import AsyncConnection, run_async


@dataclass(frozen=True, slots=True)
class SessionKey:
    """The key a session was opened with."""

    id: str
    name: str
    scopes: tuple[str, ...]


async def insert_async(
    conn: AsyncConnection, id_hash: str, key_id: str, seconds: int, client_address: str | None
) -> bool:
    """Open a session for a live key; False when the key is unknown or revoked."""
    params = {"id_hash": id_hash, "key_id": key_id, "seconds": seconds, "client_address": client_address}
    return bool((await run_async(conn, queries.INSERT_SESSION, params)).rows)


async def find_async(conn: AsyncConnection, id_hash: str) -> SessionKey | None:
    """The key of a live session (unexpired, key not revoked); None for anything else."""
    rows = (await run_async(conn, queries.FIND_SESSION, {"id_hash": id_hash})).rows
    if not rows:
        return None
    key_id, name, scopes = rows[0]
    return SessionKey(key_id, name, tuple(scopes))


async def delete_async(conn: AsyncConnection, id_hash: str) -> tuple[str, str] | None:
    """End a session; the id and name of its key, or None when there was no such session."""
    rows = (await run_async(conn, queries.DELETE_SESSION, {"id_hash": id_hash})).rows
    return (str(rows[0][0]), str(rows[0][1])) if rows else None
