"""The client against a live API: api, relay and worker processes (so jobs really finish), one
stack per module; every test makes its own jobs, so none needs an empty ledger."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from conveyor_client import Client

from tests.support.faults import purge_queues
from tests.support.infra import Infra
from tests.support.keys import full_key
from tests.support.stack import Stack

EVENTS_PATH = "/api/v1/events"


@pytest.fixture(scope="module")
def live(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, job_attempts, workers, relays CASCADE")
    purge_queues(infra.broker_url)
    running = Stack(workdir=Path(tmp_path_factory.mktemp("client")), env=dict(os.environ))
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(live: Stack) -> Iterator[Client]:
    with Client(live.base_url, key=full_key(), timeout=30.0) as opened:
        yield opened


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def events_served(live: Stack) -> None:
    """The event stream comes with its own change: until the API serves it, its tests skip."""
    with live.client() as http:
        paths = http.get("/openapi.json").json()["paths"]
    if EVENTS_PATH not in paths:
        pytest.skip(f"this API does not serve {EVENTS_PATH} yet")


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests a client sends, by method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)
