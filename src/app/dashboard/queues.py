"""Queue depths from RabbitMQ, shared by every open dashboard and refreshed off the request path.

Asking RabbitMQ costs a connection and a round trip per queue (~10-100 ms), and the
broker may be slow or down; a dashboard refresh should cost neither. So a reading is
served from memory while it is fresh, served and refreshed in the background while it is
merely recent, and only read in line when there is none or it is old.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from dramatiq.common import xq_name

from app.jobs.registry import Queue, public_tasks
from app.logs import get_logger
from app.operate.health import check_broker
from app.settings import get_settings

# Every dashboard polls every 2 s: one broker round trip per interval serves them all.
FRESH_SECONDS = 1.5
# Older than this, a reading is not shown as current any more: the request waits for a new one.
RECENT_SECONDS = 15.0

log = get_logger("conveyor.dashboard")


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


@dataclass
class _Reading:
    url: str
    at: float
    view: BrokerView


_lock = threading.Lock()
_reading: _Reading | None = None
_refreshing = False


def queue_names() -> list[str]:
    return sorted({q.value for q in Queue} | {spec.queue for spec in public_tasks()})


def queue_depths() -> BrokerView:
    """Blocking when there is no recent reading: call it from a worker thread."""
    global _refreshing
    url = get_settings().broker_url
    with _lock:
        if _reading is not None and _reading.url == url:
            age = time.monotonic() - _reading.at
            if age < RECENT_SECONDS:
                if age >= FRESH_SECONDS and not _refreshing:
                    _refreshing = True
                    threading.Thread(target=_refresh_in_background, args=(url,), daemon=True).start()
                return _reading.view
    return _store(url, _fetch())


def _store(url: str, view: BrokerView) -> BrokerView:
    global _reading
    with _lock:
        _reading = _Reading(url, time.monotonic(), view)
    return view


def _refresh_in_background(url: str) -> None:
    global _refreshing
    try:
        _store(url, _fetch())
    except Exception:  # a thread of its own: nobody else would see the error
        log.exception("reading queue depths from the broker failed")
    finally:
        with _lock:
            _refreshing = False


def _fetch() -> BrokerView:
    names = queue_names()
    check = check_broker(get_settings(), [n for q in names for n in (q, xq_name(q))])
    depths: dict[str, int] = check.details.get("queues", {})
    queues = [QueueDepth(q, depths.get(q), depths.get(xq_name(q))) for q in names]
    # A queue nobody declared yet is a normal state of a fresh install, not a failure.
    unreachable = not check.ok and "queues" not in check.details
    return BrokerView(ok=not unreachable, reason=check.reason if unreachable else None, queues=queues)
