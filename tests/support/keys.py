"""API keys for tests: one key with every scope per test run, and keys made to order."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable

# The run's key with every scope, created by the `infra` fixture once the ledger is migrated,
# and exported as CONVEYOR_KEY so the processes a test starts see it too.
ENV = "CONVEYOR_KEY"


def full_key() -> str:
    key = os.environ.get(ENV, "")
    assert key, "no test key: the infra fixture creates it"
    return key


def auth(key: str | None = None) -> dict[str, str]:
    """The Authorization header of `key` (the run's full key by default)."""
    return {"authorization": f"Bearer {key or full_key()}"}


def make_key(scopes: Iterable[str], name: str | None = None) -> str:
    """A new key in this run's ledger with exactly these scopes."""
    from app.access import keys
    from app.ledger.engines import sync_engine

    with sync_engine().begin() as conn:
        return keys.create(conn, name or f"test-{secrets.token_hex(4)}", keys.parse_scopes(list(scopes)))


def revoke_key(name: str) -> None:
    from app.access import keys
    from app.ledger.engines import sync_engine

    with sync_engine().begin() as conn:
        keys.revoke(conn, name)
