"""The client against a live API: the run's shared api, relay and worker (so jobs really finish),
fresh for each module; every test makes its own jobs, so none needs an empty ledger."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conveyor_client import Client

from tests.conftest import SHARED_STACK
from tests.support.infra import Infra
from tests.support.keys import full_key
from tests.support.stack import Stack

EVENTS_PATH = "/api/v1/events"


@pytest.fixture(scope="module")
def live(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return SHARED_STACK.fresh(infra, tmp_path_factory)


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
