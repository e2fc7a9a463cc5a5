from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from tests.support.infra import Infra
from tests.support.keys import auth


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    """The API application in this process, on this run's database; no broker on the path."""
    from app.api.events import close_event_pump
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    application = create_app()
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://conveyor.test", headers=auth()
    ) as client:
        yield client
    # ASGITransport runs no lifespan: close what the app opened, as its shutdown would.
    intake = getattr(application.state, "intake", None)
    if intake is not None:
        await intake.close()
    await close_event_pump(application)
    await dispose_async_engines()


@pytest.fixture
async def anonymous(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this process, and a client that sends no key unless a test gives one."""
    from app.api.events import close_event_pump
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    application = create_app()
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://conveyor.test") as client:
        yield client
    intake = getattr(application.state, "intake", None)
    if intake is not None:
        await intake.close()
    await close_event_pump(application)
    await dispose_async_engines()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def count_jobs(infra: Infra) -> int:
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        assert row is not None
        return int(row[0])
