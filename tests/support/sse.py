"""Reading a Server-Sent Events stream in tests: the events as (id, event, data) in order."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sse:
    id: str
    event: str
    data: dict[str, Any]
    received: float  # time.time() when its last line arrived


class SseReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments = 0
        self._lines = response.iter_lines()

    def take(self, count: int | None = None, until: Callable[[list[Sse]], bool] | None = None) -> list[Sse]:
        """Events until `count` arrived or `until` holds (the read timeout bounds a silent stream)."""
        taken: list[Sse] = []
        fields: dict[str, str] = {}
        for line in self._lines:
            if line.startswith(":"):
                self.comments += 1
            elif line == "":
                if fields:
                    taken.append(Sse(fields["id"], fields["event"], json.loads(fields["data"]), time.time()))
                    fields = {}
                    if (count is not None and len(taken) >= count) or (until is not None and until(taken)):
                        return taken
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        return taken


@contextmanager
def events(
    base_url: str,
    key: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    read_timeout: float = 30.0,
) -> Iterator[SseReader]:
    timeout = httpx.Timeout(10.0, read=read_timeout)
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream(
            "GET",
            "/api/v1/events",
            params=params,
            headers={"authorization": f"Bearer {key}", **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)
