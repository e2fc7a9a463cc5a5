"""The api_keys table: creating, finding, touching, re-hashing, revoking and listing keys (never a
secret)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    revoked: bool
    legacy: bool  # hashed before migration 0006: with KEYS_SECRET or the old development default


@dataclass(frozen=True, slots=True)
class KeyListing:
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def insert(conn: SyncConnection, key_id: str, name: str, secret_hash: str, scopes: Sequence[str]) -> bool:
    """Store a new key; False when the name is taken."""
    params = {"id": key_id, "name": name, "secret_hash": secret_hash, "scopes": list(scopes)}
    return bool(run(conn, queries.INSERT_KEY, params).rows)


async def find_async(conn: AsyncConnection, key_id: str) -> StoredKey | None:
    rows = (await run_async(conn, queries.FIND_KEY, {"id": key_id})).rows
    if not rows:
        return None
    found_id, name, secret_hash, scopes, revoked_at, hash_scheme = rows[0]
    return StoredKey(
        found_id, name, secret_hash, tuple(scopes), revoked_at is not None, hash_scheme == "legacy"
    )


async def rehash_async(conn: AsyncConnection, key_id: str, secret_hash: str) -> None:
    """Store a legacy key's hash made with the current pepper; it is no longer legacy."""
    await run_async(conn, queries.REHASH_KEY, {"id": key_id, "secret_hash": secret_hash})


async def touch_async(conn: AsyncConnection, key_id: str) -> None:
    await run_async(conn, queries.TOUCH_KEY, {"id": key_id})


def revoke(conn: SyncConnection, name: str) -> bool:
    """Revoke the live key of that name and end its dashboard sessions; False when there is none."""
    return bool(run(conn, queries.REVOKE_KEY, {"name": name}).rows)


def listing(conn: SyncConnection) -> list[KeyListing]:
    return [
        KeyListing(name, tuple(scopes), created, used, revoked)
        for name, scopes, created, used, revoked in run(conn, queries.LIST_KEYS).rows
    ]


def live_scopes(conn: SyncConnection, key_id: str) -> tuple[str, ...] | None:
    """The scopes of a key that is not revoked; None when it is unknown or revoked."""
    rows = run(conn, queries.LIVE_KEY_SCOPES, {"id": key_id}).rows
    return None if not rows else tuple(rows[0][0])
