"""Server-Sent Events, as the HTML standard reads them, and where to resume a dropped stream."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from conveyor_client._errors import NetworkError

# The cursor before every event: `events(after=OLDEST)` starts from the oldest event the API keeps.
OLDEST = "0-0"


@dataclass(frozen=True)
class ServerSentEvent:
    id: str | None
    event: str
    data: str


class Decoder:
    """Turns the lines of one connection's stream into events: an event ends at a blank line;
    comment lines (`:` first, the keep-alives) and unknown fields are skipped."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self.retry_seconds: float | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_seconds = int(value) / 1000
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(id=self._id, event=event or "message", data="\n".join(data))


class Resumption:
    """Where a stream stands across its connections: the last event id (sent back as
    `Last-Event-ID`), the ids already yielded (so none is yielded twice), and the backoff."""

    # Ids remembered against a server that repeats itself after a reconnection.
    SEEN = 10_000
    FIRST_DELAY = 0.25
    MAX_DELAY = 10.0

    def __init__(self, after: str | None, max_retries: int | None) -> None:
        self.last_id = after
        self.max_retries = max_retries
        self.failures = 0
        self.server_delay: float | None = None
        self._order: deque[str] = deque()
        self._seen: set[str] = set()
        if after is not None:
            self._remember(after)

    def headers(self) -> dict[str, str]:
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if self.last_id is not None:
            headers["last-event-id"] = self.last_id
        return headers

    def fresh(self, event: ServerSentEvent) -> bool:
        """Whether `event` is new; records it as the place to resume after."""
        self.failures = 0
        if event.id is None:
            return True
        if event.id in self._seen:
            return False
        self.last_id = event.id
        self._remember(event.id)
        return True

    def take(self, decoder: Decoder, line: str) -> ServerSentEvent | None:
        """The event a line completes, if it is new (see `fresh`)."""
        sent = decoder.feed(line)
        self.server_delay = decoder.retry_seconds or self.server_delay
        return sent if sent is not None and self.fresh(sent) else None

    def delay(self, error: BaseException | None, retry_after: float | None = None) -> float:
        """Seconds to wait before connecting again; raises `error` (or a NetworkError) once
        `max_retries` connections in a row have failed."""
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            if error is not None:
                raise error
            raise NetworkError(f"the event stream closed {self.failures - 1} times in a row")
        backoff = min(self.FIRST_DELAY * 2 ** (self.failures - 1), self.MAX_DELAY)
        return float(max(backoff, retry_after or 0.0, self.server_delay or 0.0))

    def _remember(self, event_id: str) -> None:
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.SEEN:
            self._seen.discard(self._order.popleft())
