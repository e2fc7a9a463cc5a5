"""The dashboard's sign-in: a server-side session, named by a random cookie value.

Signing in stores a row (the SHA-256 of 32 random bytes, the key, the expiry); the cookie holds
those random bytes and nothing else: no key id, no signature, so no secret can forge one.
Every request looks its row up, joined to the key, so signing out, revoking the key or the
expiry ends a session at once in every API process. Sessions are not cached: dashboard
traffic is light, and a cache would let a session outlive its row.

Over https the cookie is `__Host-conveyor_session` with Secure (the browser then sends it only
over https, to this host, for every path, and no subdomain can set it); over plain http it is
`conveyor_session`. Both are HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from app.access.keys import Client, client_of
from app.ledger import sessions as stored
from app.settings import get_settings

COOKIE = "conveyor_session"
SECURE_COOKIE = "__Host-conveyor_session"
# What `secrets.token_urlsafe(32)` makes; anything else is refused without a lookup.
VALUE = re.compile(r"[A-Za-z0-9_-]{43}")


def cookie_name(secure: bool) -> str:
    """The cookie's name over https (`secure`) or plain http."""
    return SECURE_COOKIE if secure else COOKIE


def well_formed(value: str) -> bool:
    return VALUE.fullmatch(value) is not None


def _id_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def open_session(client: Client, address: str | None, conn_factory: Any) -> tuple[str, int] | None:
    """A new session of `client`: the cookie's value and how many seconds it lasts; None when
    the key was revoked meanwhile. `conn_factory()` opens a transaction that commits."""
    value, lasts = secrets.token_urlsafe(32), get_settings().session_seconds
    async with conn_factory() as conn:
        opened = await stored.insert_async(conn, _id_hash(value), client.key_id, lasts, address)
    return (value, lasts) if opened else None


async def client_of_session(value: str, conn_factory: Any) -> Client | None:
    """The client of a live session; None for a value that names none (ended, expired, revoked,
    malformed). `conn_factory()` opens a ledger connection."""
    if not well_formed(value):
        return None
    async with conn_factory() as conn:
        found = await stored.find_async(conn, _id_hash(value))
    return None if found is None else client_of(found.id, found.name, found.scopes)


async def end_session(value: str, conn_factory: Any) -> tuple[str, str] | None:
    """Sign out: the session's row goes. The id and name of its key, or None when there was
    none. `conn_factory()` opens a transaction that commits."""
    if not well_formed(value):
        return None
    async with conn_factory() as conn:
        return await stored.delete_async(conn, _id_hash(value))
