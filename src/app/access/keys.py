"""API keys: random tokens with scopes; the ledger keeps only a keyed hash of each.

A key reads `cvk_<id>_<secret>`: the id (public, 12 hex digits) finds the stored key, the
secret (32 random bytes) proves it. The ledger stores HMAC-SHA256(KEYS_SECRET, secret): a
fast keyed hash is right for a high-entropy token (a slow password hash would only slow
every request; nobody can brute-force 256 random bits), and a dump of the table alone lets
no one in. Hashes are compared in constant time.

Each API process trusts a verified key for KEYS_CACHE_SECONDS, so authentication costs a
dictionary lookup on the hot path, and a revocation reaches every process within that time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.errors import Forbidden, KeyNameTaken, KeyNotFound, Unauthenticated
from app.ledger import keys as stored
from app.ledger.connections import AsyncConnection, SyncConnection
from app.settings import get_settings

PREFIX = "cvk_"
TOKEN = re.compile(r"^cvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Scope(StrEnum):
    """What a key may do; a route names the scopes any one of which lets a request in."""

    ENQUEUE = "enqueue"  # create jobs, and read the jobs this key created
    READ = "read"  # every GET under /api/v1; the dashboard, to look
    OPERATE = "operate"  # replay, cancel, discard, purge, schedules; the dashboard, to act
    METRICS = "metrics"  # /metrics


@dataclass(frozen=True, slots=True)
class Client:
    """The key a request was made with."""

    key_id: str
    name: str
    scopes: frozenset[Scope]

    def may(self, *scopes: Scope) -> bool:
        return any(scope in self.scopes for scope in scopes)

    def require(self, *scopes: Scope) -> Client:
        if not self.may(*scopes):
            needed = " or ".join(f"'{scope}'" for scope in scopes)
            raise Forbidden(f"this key lacks the {needed} scope this needs")
        return self

    @property
    def reads_everything(self) -> bool:
        """A `read` key sees every job; an `enqueue`-only key sees only its own."""
        return Scope.READ in self.scopes


def parse_scopes(text: str | Iterable[str]) -> frozenset[Scope]:
    """`"enqueue,read"` (or a list) as scopes; ValueError names what is not one."""
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    unknown = [name for name in names if name not in {scope.value for scope in Scope}]
    if unknown or not names:
        known = ", ".join(scope.value for scope in Scope)
        raise ValueError(f"unknown scope(s) {', '.join(unknown) or '(none given)'}; scopes are: {known}")
    return frozenset(Scope(name) for name in names)


def _digest(secret: str) -> str:
    key = get_settings().keys_secret.get_secret_value().encode()
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def create(conn: SyncConnection, name: str, scopes: Iterable[Scope]) -> str:
    """Store a new key and return it: the only time it is ever seen."""
    if not NAME.match(name):
        raise ValueError(
            "a key name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    if not stored.insert(conn, key_id, name, _digest(secret), sorted(scope.value for scope in scopes)):
        raise KeyNameTaken(name)
    return f"{PREFIX}{key_id}_{secret}"


def revoke(conn: SyncConnection, name: str) -> None:
    if not stored.revoke(conn, name):
        raise KeyNotFound(name)


class Verifier:
    """Verifies keys against the ledger and remembers the good ones briefly (one per API process).

    A key that is not remembered (first use, or its entry expired) is looked up once: the
    requests that arrive meanwhile wait for that lookup instead of each reading the key and
    writing its `last_used_at`, which under load made every request of a busy client queue
    on the same row's lock each time the entry expired.
    """

    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = get_settings().keys_cache_seconds if ttl is None else ttl
        self._known: dict[str, tuple[float, Client]] = {}
        self._looking: dict[str, asyncio.Future[Client]] = {}

    async def verify(self, token: str, conn_factory: Any) -> Client:
        """The client a token names; raises Unauthenticated for a bad, unknown or revoked key.

        `conn_factory()` is an async context manager of a ledger connection, opened only when
        the key is not known yet.
        """
        match = TOKEN.match(token)
        if match is None:
            raise Unauthenticated("malformed API key")
        key_id, secret = match.groups()
        digest = _digest(secret)

        async def look_up() -> Client:
            async with conn_factory() as conn:
                return await self._look_up(conn, key_id, digest)

        return await self._remembered(key_id + digest, look_up)

    async def client_by_id(self, key_id: str, conn_factory: Any) -> Client:
        """The client of a key id (a dashboard session), if the key is still live."""

        async def look_up() -> Client:
            async with conn_factory() as conn:
                found = await stored.find_async(conn, key_id)
            if found is None or found.revoked:
                raise Unauthenticated("the key of this session is unknown or revoked")
            return Client(found.id, found.name, frozenset(Scope(s) for s in found.scopes))

        return await self._remembered("id:" + key_id, look_up)

    async def _remembered(self, entry: str, look_up: Callable[[], Awaitable[Client]]) -> Client:
        """The remembered client of `entry`, or the one lookup that is under way, or a new one."""
        cached = self._known.get(entry)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._looking.get(entry)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the lookup it waited for
                # the request that looked it up went away: look it up here
        future: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._looking[entry] = future
        try:
            client = await look_up()
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._looking.get(entry) is future:
                del self._looking[entry]
        future.set_result(client)
        now = time.monotonic()
        self._known[entry] = (now + self.ttl, client)
        if len(self._known) > 10_000:  # unbounded tokens must not grow memory
            self._known = {k: v for k, v in self._known.items() if v[0] > now}
        return client

    @staticmethod
    async def _look_up(conn: AsyncConnection, key_id: str, digest: str) -> Client:
        found = await stored.find_async(conn, key_id)
        if found is None or not hmac.compare_digest(found.secret_hash, digest):
            raise Unauthenticated("unknown API key")
        if found.revoked:
            raise Unauthenticated("this API key was revoked")
        await stored.touch_async(conn, key_id)
        await conn.commit()  # a reading connection: without it the write is rolled back
        return Client(found.id, found.name, frozenset(Scope(s) for s in found.scopes))
