"""A `DATABASE_URL` that names a host that is away before the one that answers still serves every
pool: libpq tries the hosts in order (what a primary and its standby look like to a client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.integration.conftest import count_jobs
from tests.support.infra import Infra, free_port


def multi_host_urls(database: str) -> dict[str, str]:
    away = free_port()  # nothing listens there: libpq goes on to the next host
    return {
        "sqlalchemy": f"postgresql+psycopg://postgres@/{database}?host=127.0.0.1:{away}&host=127.0.0.1:5432",
        "libpq": f"postgresql+psycopg://postgres@/{database}?host=127.0.0.1,127.0.0.1&port={away},5432",
    }


@pytest.fixture(params=["sqlalchemy", "libpq"])
def multi_host(
    request: pytest.FixtureRequest, clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    from app.ledger.engines import dispose_sync_engines
    from app.settings import get_settings

    url = multi_host_urls(clean_ledger.database)[request.param]
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    dispose_sync_engines()
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.anyio
async def test_the_api_accepts_jobs_through_a_multi_host_url(multi_host: str, clean_ledger: Infra) -> None:
    import httpx

    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines
    from tests.support.keys import auth

    application = create_app()
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://conveyor.test", headers=auth()
        ) as api:
            accepted = await api.post(
                "/api/v1/jobs", json={"task": "app.tasks.example.echo", "payload": {"message": "hi"}}
            )
            assert accepted.status_code == 202, accepted.text
            read = await api.get(f"/api/v1/jobs/{accepted.json()['id']}")
            assert read.status_code == 200, read.text
    finally:
        intake = getattr(application.state, "intake", None)
        if intake is not None:
            await intake.close()
        await dispose_async_engines()
    assert count_jobs(clean_ledger) == 1


def test_the_processes_own_connections_and_engines_reach_the_host_that_answers(multi_host: str) -> None:
    from app.ledger.connections import own_connection
    from app.ledger.engines import sync_engine
    from app.ledger.urls import conninfo

    with own_connection(conninfo(multi_host)) as conn:
        assert conn.info.port == 5432
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    with sync_engine(multi_host).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
