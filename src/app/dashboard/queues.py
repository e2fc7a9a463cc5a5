"""Queue depths from RabbitMQ, shared by every open dashboard for a moment."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from app.health import check_broker
from app.registry import Queue, public_tasks
from app.settings import get_settings

# Every dashboard polls every 2 s; one broker round trip per interval serves them all.
FRESH_SECONDS = 1.5
DEAD_LETTER_SUFFIX = ".XQ"


@dataclass(frozen=True, slots=True)
class QueueDepth:
    name: str
    ready: int | None
    dead_letters: int | None


@dataclass(frozen=True, slots=True)
class BrokerView:
    ok: bool
    reason: str | None
    queues: list[QueueDepth] = field(default_factory=list)


_lock = threading.Lock()
_cached: tuple[float, str, BrokerView] | None = None


def queue_names() -> list[str]:
    return sorted({q.value for q in Queue} | {spec.queue for spec in public_tasks()})


def queue_depths() -> BrokerView:
    """Blocking (a broker connection): call it from a worker thread."""
    global _cached
    settings = get_settings()
    with _lock:
        if _cached is not None:
            fetched_at, url, view = _cached
            if url == settings.broker_url and time.monotonic() - fetched_at < FRESH_SECONDS:
                return view
        view = _fetch()
        _cached = (time.monotonic(), settings.broker_url, view)
        return view


def _fetch() -> BrokerView:
    names = queue_names()
    check = check_broker(get_settings(), [n for q in names for n in (q, q + DEAD_LETTER_SUFFIX)])
    depths: dict[str, int] = check.details.get("queues", {})
    queues = [QueueDepth(q, depths.get(q), depths.get(q + DEAD_LETTER_SUFFIX)) for q in names]
    # A queue nobody declared yet is a normal state of a fresh install, not a failure.
    unreachable = not check.ok and "queues" not in check.details
    return BrokerView(ok=not unreachable, reason=check.reason if unreachable else None, queues=queues)
