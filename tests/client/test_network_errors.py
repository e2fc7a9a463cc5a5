"""A request that gets no answer raises the client's own `NetworkError` (a `ConveyorError`),
never httpx's: against a port nobody listens on, and a server that accepts and never answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from conveyor_client import AsyncClient, Client, ConveyorError, NetworkError


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield int(listening.getsockname()[1])


def test_a_call_to_an_api_nobody_serves_raises_network_error(closed_port: int) -> None:
    with Client(f"http://127.0.0.1:{closed_port}") as client, pytest.raises(NetworkError) as failed:
        client.get("some-job")
    assert isinstance(failed.value, ConveyorError)
    assert (failed.value.status, failed.value.timed_out) == (0, False)
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert f"127.0.0.1:{closed_port}" in str(failed.value.detail)


def test_a_call_that_gets_no_answer_in_time_raises_network_error_saying_so(silent_port: int) -> None:
    with (
        Client(f"http://127.0.0.1:{silent_port}", timeout=0.2) as client,
        pytest.raises(NetworkError) as failed,
    ):
        client.enqueue("app.tasks.example.echo", {"message": "hi"})
    assert failed.value.timed_out
    assert isinstance(failed.value.__cause__, httpx.TimeoutException)


@pytest.mark.anyio
async def test_the_async_client_raises_the_same_errors(closed_port: int, silent_port: int) -> None:
    async with AsyncClient(f"http://127.0.0.1:{closed_port}") as client:
        with pytest.raises(NetworkError) as refused:
            await client.cancel("some-job")
    async with AsyncClient(f"http://127.0.0.1:{silent_port}", timeout=0.2) as client:
        with pytest.raises(NetworkError) as silent:
            await client.enqueue_many("app.tasks.example.echo", [{"message": "hi"}])
    assert (refused.value.timed_out, silent.value.timed_out) == (False, True)


def test_an_event_stream_that_cannot_connect_ends_with_network_error(closed_port: int) -> None:
    with Client(f"http://127.0.0.1:{closed_port}") as client, pytest.raises(NetworkError) as failed:
        next(iter(client.events(max_retries=1)))
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
