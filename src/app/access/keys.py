"""API keys: random tokens with scopes; the ledger keeps only a keyed hash of each.

A key reads `cvk_<id>_<secret>`: the id (public, 12 hex digits) finds the stored key, the
secret (32 random bytes) proves it. The ledger stores HMAC-SHA256(pepper, secret): a fast
keyed hash is right for a high-entropy token (a slow password hash would only slow every
request; nobody can brute-force 256 random bits), and a dump of the table alone lets no one
in. The pepper is KEYS_SECRET when the environment sets it, else one generated at first start
and kept in the ledger (`conveyor_secrets`): no secret ships with the code. Hashes are
compared in constant time.

Each API process trusts a verified key for KEYS_CACHE_SECONDS, so authentication costs a
dictionary lookup on the hot path, and a revocation reaches every process within that time.
It also remembers, for REFUSAL_MEMORY_SECONDS, the key ids that do not exist and the keys that
did not match, so that a flood of made-up keys reaches the database once per key at most.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.errors import Forbidden, KeyNameTaken, KeyNotFound, Unauthenticated
from app.ledger import keys as stored
from app.ledger import secrets as generated
from app.ledger.connections import AsyncConnection, SyncConnection
from app.settings import PUBLISHED_SECRETS, get_settings

PREFIX = "cvk_"
TOKEN = re.compile(r"cvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The name of the generated pepper in conveyor_secrets.
PEPPER = "api_keys_pepper"
# The default KEYS_SECRET of the releases before migration 0006. It is public, so it keys
# nothing new: it only recognises the hashes made with it (hash_scheme 'legacy'), each of which
# still needs its key's 256-bit secret, and each is re-hashed with the current pepper at once.
LEGACY_DEVELOPMENT_PEPPER = next(iter(PUBLISHED_SECRETS)).encode()
# At most this many refused keys are remembered per API process.
REFUSED_MEMORY_SIZE = 10_000
UNKNOWN_KEY = "unknown API key"


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


def _digest(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def _configured_pepper() -> bytes | None:
    configured = get_settings().keys_secret.get_secret_value()
    return configured.encode() if configured else None


def pepper(conn: SyncConnection) -> bytes:
    """The pepper of key hashes: KEYS_SECRET, or the ledger's (generated in `conn`'s transaction
    when there is none yet, so it exists exactly when a key hashed with it does)."""
    configured = _configured_pepper()
    if configured is not None:
        return configured
    return generated.get_or_create(conn, PEPPER, secrets.token_urlsafe(32))[0].encode()


def create(conn: SyncConnection, name: str, scopes: Iterable[Scope]) -> str:
    """Store a new key and return it: the only time it is ever seen."""
    if not NAME.match(name):
        raise ValueError(
            "a key name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    digest = _digest(pepper(conn), secret)
    if not stored.insert(conn, key_id, name, digest, sorted(scope.value for scope in scopes)):
        raise KeyNameTaken(name)
    return f"{PREFIX}{key_id}_{secret}"


def revoke(conn: SyncConnection, name: str) -> None:
    """Revoke a key and end its dashboard sessions, in the caller's transaction."""
    if not stored.revoke(conn, name):
        raise KeyNotFound(name)


class Verifier:
    """Verifies keys against the ledger and remembers the good ones briefly (one per API process).

    A key that is not remembered (first use, or its entry expired) is looked up once: the
    requests that arrive meanwhile wait for that lookup instead of each reading the key and
    writing its `last_used_at`, which under load made every request of a busy client queue
    on the same row's lock each time the entry expired. A key that failed is remembered too,
    so asking again costs no lookup.
    """

    def __init__(self, ttl: float | None = None, refusal_ttl: float | None = None) -> None:
        settings = get_settings()
        self.ttl = settings.keys_cache_seconds if ttl is None else ttl
        self.refusal_ttl = settings.refusal_memory_seconds if refusal_ttl is None else refusal_ttl
        self._known: dict[str, tuple[float, Client]] = {}
        self._refused: dict[str, tuple[float, str]] = {}
        # Keys this process has verified (by id and digest): looked up again past the refusal
        # throttle, so a flood of bad keys from a shared address (a NAT, an untrusted proxy)
        # does not lock out the good keys behind it. A digest proves the secret was known.
        self._proven: set[str] = set()
        self._looking: dict[str, asyncio.Future[Client]] = {}
        self._pepper: bytes | None = _configured_pepper()
        self._pepper_lock = asyncio.Lock()

    async def verify(
        self,
        token: str,
        conn_factory: Any,
        guard: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> Client:
        """The client a token names; raises Unauthenticated for a bad, unknown or revoked key.

        `conn_factory()` is an async context manager of a ledger connection, opened only when
        the key is not known yet; `guard()` is entered around that lookup (it may refuse it).
        """
        match = TOKEN.fullmatch(token)
        if match is None:
            raise Unauthenticated("malformed API key")
        key_id, secret = match.groups()
        pepper = self._pepper or await self.load_pepper(conn_factory)
        entry = key_id + _digest(pepper, secret)

        async def look_up() -> Client:
            for remembered in ("id:" + key_id, entry):
                refused = self._refused.get(remembered)
                if refused is not None and refused[0] > time.monotonic():
                    raise Unauthenticated(refused[1])
            throttled = guard is not None and entry not in self._proven
            async with guard() if throttled and guard is not None else nullcontext(), conn_factory() as conn:
                client = await self._look_up(conn, key_id, secret, entry)
            if len(self._proven) >= REFUSED_MEMORY_SIZE:
                self._proven.clear()
            self._proven.add(entry)
            return client

        return await self._remembered(entry, look_up)

    async def load_pepper(self, conn_factory: Any) -> bytes:
        """The ledger's pepper, generated by the first process that needs it, read once (the
        first requests of a process wait for one read, not one each)."""
        async with self._pepper_lock:
            if self._pepper is None:
                async with conn_factory() as conn:
                    value, _ = await generated.get_or_create_async(conn, PEPPER, secrets.token_urlsafe(32))
                    await conn.commit()  # kept only once stored: every process must use the same
                self._pepper = value.encode()
        return self._pepper

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

    def _refuse(self, remembered: str, reason: str) -> Unauthenticated:
        """Remember a refusal for REFUSAL_MEMORY_SECONDS; the error to raise."""
        now = time.monotonic()
        if len(self._refused) >= REFUSED_MEMORY_SIZE:
            kept = {k: v for k, v in self._refused.items() if v[0] > now}
            # Still full of live entries (a flood): forget the older half, oldest first.
            self._refused = (
                kept if len(kept) < REFUSED_MEMORY_SIZE else dict(list(kept.items())[len(kept) // 2 :])
            )
        self._refused[remembered] = (now + self.refusal_ttl, reason)
        return Unauthenticated(reason)

    async def _look_up(self, conn: AsyncConnection, key_id: str, secret: str, entry: str) -> Client:
        found = await stored.find_async(conn, key_id)
        if found is None:
            raise self._refuse("id:" + key_id, UNKNOWN_KEY)
        digest = entry[len(key_id) :]
        matches = hmac.compare_digest(found.secret_hash, digest)
        if not matches and found.legacy:
            matches = hmac.compare_digest(found.secret_hash, _digest(LEGACY_DEVELOPMENT_PEPPER, secret))
        if not matches:
            raise self._refuse(entry, UNKNOWN_KEY)
        if found.revoked:
            self._proven.discard(entry)
            raise self._refuse(entry, "this API key was revoked")
        if found.legacy:
            await stored.rehash_async(conn, key_id, digest)
        await stored.touch_async(conn, key_id)
        await conn.commit()  # a reading connection: without it the writes are rolled back
        return client_of(found.id, found.name, found.scopes)


def client_of(key_id: str, name: str, scopes: Iterable[str]) -> Client:
    return Client(key_id, name, frozenset(Scope(scope) for scope in scopes))
