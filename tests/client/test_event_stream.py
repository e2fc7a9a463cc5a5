"""How the client reads an event stream, against a scripted SSE server on loopback: what it
must do with whatever a server or the network does, before (and beside) the real API."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conveyor_client import AsyncClient, AuthError, Client, NetworkError

# One script per connection, in order: (status, the body's pieces). The body ends where the
# server closes the connection, as a dropped stream does.
Script = list[tuple[int, list[str]]]


def event(event_id: str, state: str, job: str = "j1") -> str:
    return f"id: {event_id}\nevent: {state}\ndata: {json.dumps({'id': job, 'task': 't', 'state': state})}\n\n"


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = list(script)
        self.last_event_ids: list[str | None] = []
        self.queries: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.last_event_ids.append(self.headers.get("Last-Event-ID"))
                served.queries.append(self.path)
                status, pieces = served.script.pop(0) if served.script else (404, ['{"detail": "done"}'])
                self.send_response(status)
                kind = "text/event-stream" if status == 200 else "application/json"
                self.send_header("content-type", kind)
                if status == 503:
                    self.send_header("retry-after", "0")
                self.end_headers()
                for piece in pieces:
                    self.wfile.write(piece.encode())
                    self.wfile.flush()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


FIRST = [": keep-alive\n\n", event("1", "queued"), event("2", "running"), "id: 3\nevent: succ"]
SECOND = [
    event("2", "running"),  # a server that repeats itself: the client yields each id once
    ": keep-alive\n\n",
    "id: 3\nevent: succeeded\n",
    'data: {"id": "j1", "task": "t",\ndata: "state": "succeeded", "result": {"n": 1}}\n\n',
]


@pytest.fixture
def dropped_once() -> Iterator[ScriptedServer]:
    with ScriptedServer([(200, FIRST), (503, ['{"detail": "away"}']), (200, SECOND)]) as server:
        yield server


def test_a_dropped_stream_resumes_after_the_last_event_and_yields_each_id_once(
    dropped_once: ScriptedServer,
) -> None:
    with Client(dropped_once.url, key="cvk_x") as client:
        seen = []
        for got in client.events(job="j1", task="t"):
            seen.append((got.id, got.state, got.job.state))
            if got.job.finished:
                break
    assert seen == [("1", "queued", "queued"), ("2", "running", "running"), ("3", "succeeded", "succeeded")]
    assert got.job.result == {"n": 1}
    # The half-sent event 3 was never yielded; the 503 was retried with the same cursor.
    assert dropped_once.last_event_ids == [None, "2", "2"]
    assert all(query.startswith("/api/v1/events?") and "job=j1" in query for query in dropped_once.queries)


def test_after_resumes_from_a_given_event(dropped_once: ScriptedServer) -> None:
    with Client(dropped_once.url) as client:
        first = next(iter(client.events(after="0")))
    assert (first.id, dropped_once.last_event_ids) == ("1", ["0"])


@pytest.mark.anyio
async def test_the_async_client_resumes_the_same_way(dropped_once: ScriptedServer) -> None:
    async with AsyncClient(dropped_once.url, key="cvk_x") as client:
        seen = []
        async for got in client.events(job="j1"):
            seen.append(got.id)
            if got.job.finished:
                break
    assert (seen, dropped_once.last_event_ids) == (["1", "2", "3"], [None, "2", "2"])


def test_a_refusal_ends_the_stream_with_its_error_without_retrying() -> None:
    refusing = ScriptedServer([(401, ['{"detail": "unknown key"}'])])
    with refusing as server, Client(server.url) as client, pytest.raises(AuthError) as refused:
        next(iter(client.events()))
    assert (refused.value.status, refused.value.detail, len(server.queries)) == (401, "unknown key", 1)


def test_a_stream_that_cannot_connect_gives_up_after_max_retries() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as client, pytest.raises(NetworkError):
        next(iter(client.events(max_retries=2)))
