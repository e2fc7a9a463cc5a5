"""No secret ships in the repository: keys are hashed with KEYS_SECRET or with a pepper generated
at first start and kept in the ledger, the same for the CLI and every API process; keys made
before migration 0006 keep working and are re-hashed with the current pepper."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from app.cli.commands import cli
from app.settings import get_settings
from tests.support.infra import Infra

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"


@pytest.fixture
async def new_app(clean_ledger: Infra) -> AsyncIterator[Any]:
    """A factory of API processes (each with its own memory of keys)."""
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    yield create_app
    await dispose_async_engines()


async def status_of(app: Any, key: str) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        return (await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {key}"})).status_code


def hmac_hex(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def stored_key(infra: Infra, key_id: str) -> tuple[str, str]:
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute(
            "SELECT secret_hash, hash_scheme FROM api_keys WHERE id = %s", (key_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def ledger_pepper(infra: Infra) -> bytes:
    from app.access.keys import PEPPER

    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT value FROM conveyor_secrets WHERE name = %s", (PEPPER,)).fetchall()
    assert len(rows) == 1
    return str(rows[0][0]).encode()


def legacy_key(infra: Infra, pepper: bytes, scheme: str = "legacy") -> tuple[str, str]:
    """A key as a release before 0006 stored it (hashed with `pepper`); its id and token."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    with psycopg.connect(infra.libpq_url) as conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, secret_hash, scopes, hash_scheme)"
            " VALUES (%s, %s, %s, ARRAY['read'], %s)",
            (key_id, f"old-{key_id}", hmac_hex(pepper, secret), scheme),
        )
    return key_id, f"cvk_{key_id}_{secret}"


def test_keys_create_hashes_with_the_ledgers_generated_pepper(clean_ledger: Infra) -> None:
    from app.access.keys import LEGACY_DEVELOPMENT_PEPPER

    created = CliRunner().invoke(cli, ["keys", "create", f"cli-{secrets.token_hex(3)}", "--scopes", "read"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    key_id, secret = key.split("_")[1], key.split("_", 2)[2]
    pepper = ledger_pepper(clean_ledger)
    assert len(pepper) >= 32
    assert pepper != LEGACY_DEVELOPMENT_PEPPER
    assert stored_key(clean_ledger, key_id) == (hmac_hex(pepper, secret), "v2")


async def test_a_key_made_by_the_cli_opens_a_new_api_process(new_app: Any) -> None:
    created = CliRunner().invoke(cli, ["keys", "create", f"cli-{secrets.token_hex(3)}", "--scopes", "read"])
    key = created.stdout.strip().splitlines()[-1]
    assert await status_of(new_app(), key) == 200
    assert await status_of(new_app(), key) == 200, "another process reads the same pepper"


async def test_a_key_made_before_migration_0006_keeps_working_and_is_rehashed(
    new_app: Any, clean_ledger: Infra
) -> None:
    from app.access.keys import LEGACY_DEVELOPMENT_PEPPER

    key_id, key = legacy_key(clean_ledger, LEGACY_DEVELOPMENT_PEPPER)
    old_hash = stored_key(clean_ledger, key_id)[0]
    assert await status_of(new_app(), key) == 200
    new_hash, scheme = stored_key(clean_ledger, key_id)
    assert scheme == "v2"
    assert new_hash != old_hash
    assert new_hash == hmac_hex(ledger_pepper(clean_ledger), key.split("_", 2)[2])
    assert await status_of(new_app(), key) == 200, "a process that never saw the old hash"
    forged = key[:-43] + secrets.token_urlsafe(32)
    assert await status_of(new_app(), forged) == 401, "the old default grants nothing without the secret"


async def test_the_old_development_default_verifies_only_keys_marked_legacy(
    new_app: Any, clean_ledger: Infra
) -> None:
    from app.access.keys import LEGACY_DEVELOPMENT_PEPPER

    _, key = legacy_key(clean_ledger, LEGACY_DEVELOPMENT_PEPPER, scheme="v2")
    assert await status_of(new_app(), key) == 401


@pytest.fixture
def keys_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    secret = "an operator's pepper, long enough: " + secrets.token_hex(8)
    monkeypatch.setenv("KEYS_SECRET", secret)
    get_settings.cache_clear()
    yield secret
    monkeypatch.undo()
    get_settings.cache_clear()


async def test_keys_secret_from_the_environment_is_the_pepper_and_verifies_legacy_keys_made_with_it(
    keys_secret: str, new_app: Any, clean_ledger: Infra
) -> None:
    from tests.support.keys import make_key

    key = make_key(["read"])
    assert stored_key(clean_ledger, key.split("_")[1])[0] == hmac_hex(
        keys_secret.encode(), key.split("_", 2)[2]
    )
    assert await status_of(new_app(), key) == 200
    key_id, legacy = legacy_key(clean_ledger, keys_secret.encode())
    assert await status_of(new_app(), legacy) == 200
    assert stored_key(clean_ledger, key_id)[1] == "v2"
