"""Health checks shared by `/health/ready`, `/metrics` and `conveyor health`.

Every check answers within a bounded time, also when a dependency hangs instead of
refusing: the work runs in a thread of its own (one at a time per check, so a hung
dependency holds one thread, not one per probe) and the caller stops waiting after
PROBE_TIMEOUT_SECONDS with a failed check that says so.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar

from dramatiq.common import xq_name
from sqlalchemy import Engine, create_engine, text

from app import transport
from app.errors import QueueTypeMismatch
from app.ledger.urls import connect_options
from app.logs import first_line
from app.operate.stats import LIVE, live_params, liveness_window_seconds
from app.settings import Settings, get_settings
from app.transport import PROBE_TIMEOUT_SECONDS

T = TypeVar("T")
# libpq's own floor is 2 s; a refused connection fails at once anyway.
DB_CONNECT_TIMEOUT_SECONDS = 2
DB_STATEMENT_TIMEOUT_MS = 2000
# Probes arrive every few seconds from each orchestrator and scraper; one AMQP connection
# per this many seconds serves them all.
BROKER_CACHE_SECONDS = 1.5
# A queue's type changes only when an operator migrates it: looked at less often than depths.
TYPES_CACHE_SECONDS = 10.0


@dataclass
class Check:
    ok: bool
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok, **self.details}
        if self.reason:
            body["reason"] = self.reason
        return body


class Probe(Generic[T]):
    """Runs `fn` in a daemon thread, one run at a time, and keeps its outcome for `ttl` seconds.

    Callers that arrive while a run is going share it; each waits at most its timeout.
    """

    def __init__(self, fn: Callable[[], T], *, ttl: float = 0.0, name: str = "probe") -> None:
        self._fn = fn
        self._ttl = ttl
        self._name = name
        self._lock = threading.Lock()
        self._running: Future[T] | None = None
        self._last: tuple[float, Future[T]] | None = None

    def start(self) -> Future[T]:
        """The outcome of a fresh enough run, or of the run this call starts or joins."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self._ttl:
                return self._last[1]
            if self._running is None:
                self._running = Future()
                thread = threading.Thread(
                    target=self._run, args=(self._running,), name=f"conveyor-{self._name}", daemon=True
                )
                thread.start()
            return self._running

    def get(self, timeout: float = PROBE_TIMEOUT_SECONDS) -> T:
        """The outcome; raises TimeoutError after `timeout` seconds, or what `fn` raised."""
        return self.start().result(timeout=timeout)

    def _run(self, future: Future[T]) -> None:
        try:
            future.set_result(self._fn())
        except BaseException as error:
            future.set_exception(error)
        with self._lock:
            self._running = None
            self._last = (time.monotonic(), future)


_probe_urls: set[str] = set()


@lru_cache(maxsize=4)
def probe_engine(url: str) -> Engine:
    """A small pool of its own whose connects and statements time out: probes never queue
    behind the application's work, and a hung database cannot hold them for long."""
    _probe_urls.add(url)
    return create_engine(
        url,
        pool_size=2,
        max_overflow=2,
        pool_timeout=PROBE_TIMEOUT_SECONDS,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_options(url, get_settings().db_failover_seconds)
        | {
            "connect_timeout": DB_CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
            "application_name": "conveyor-probe",
        },
    )


def close_probe_engines() -> None:
    """Close the probes' pooled connections (a process that is done with a database)."""
    for url in list(_probe_urls):
        probe_engine(url).dispose()
    _probe_urls.clear()
    probe_engine.cache_clear()


_probes: dict[tuple[object, ...], Probe[Any]] = {}
_probes_lock = threading.Lock()


def shared_probe(key: tuple[object, ...], fn: Callable[[], T], ttl: float) -> Probe[T]:
    with _probes_lock:
        probe = _probes.get(key)
        if probe is None:
            probe = _probes[key] = Probe(fn, ttl=ttl, name=str(key[0]))
        return probe


def forget_probes() -> None:
    """Drop every kept outcome: the next check asks again (tests; nothing in the service needs it)."""
    with _probes_lock:
        _probes.clear()


def _bounded(probe: Probe[Check], what: str, timeout: float) -> Check:
    try:
        return probe.get(timeout)
    except TimeoutError:
        return Check(False, f"{what} did not answer within {timeout:g}s")


# -- database -------------------------------------------------------------------------------


def check_database(settings: Settings | None = None, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> Check:
    settings = settings or get_settings()
    url = settings.database_url
    return _bounded(shared_probe(("database", url), lambda: _database(url), 0.0), "database", timeout)


def _database(url: str) -> Check:
    try:
        with probe_engine(url).connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return Check(True, details={"migration": version})
    except Exception as error:
        return Check(False, f"database unreachable or not migrated: {first_line(error)}")


# -- broker ---------------------------------------------------------------------------------


def inspect_queues(broker_url: str, names: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None when it is not declared); raises when unreachable."""
    return transport.depths(broker_url, names)


def queue_probe(broker_url: str, queues: Sequence[str]) -> Probe[dict[str, int | None]]:
    """The cached depths of `queues` and their dead-letter queues, shared by readiness and metrics."""
    main = tuple(sorted(set(queues)))
    names = main + tuple(xq_name(queue) for queue in main)
    return shared_probe(
        ("broker", broker_url, names), lambda: inspect_queues(broker_url, names), BROKER_CACHE_SECONDS
    )


def type_probe(settings: Settings, queues: Sequence[str]) -> Probe[QueueTypeMismatch | None]:
    """The cached answer to whether a queue has another type than BROKER_QUEUE_TYPE's (a worker
    refuses to start on one, the relay cannot publish to it)."""
    url, kind, names = settings.broker_url, settings.broker_queue_type, tuple(sorted(set(queues)))
    return shared_probe(
        ("types", url, kind, names), lambda: transport.type_mismatch(url, names, kind), TYPES_CACHE_SECONDS
    )


def check_broker(
    settings: Settings | None = None,
    queues: Sequence[str] | None = None,
    *,
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> Check:
    """The broker answers and every queue in `queues` is declared (the worker declares them)."""
    settings = settings or get_settings()
    if settings.broker_url.startswith("stub"):
        return Check(True, details={"broker": "stub"})
    try:
        depths = queue_probe(settings.broker_url, queues or ()).get(timeout)
    except TimeoutError:
        return Check(False, f"broker did not answer within {timeout:g}s")
    except Exception as error:
        return Check(False, f"broker unreachable: {first_line(error) or type(error).__name__}")
    main = sorted(set(queues or ()))
    missing = [queue for queue in main if depths.get(queue) is None]
    found = {queue: depths[queue] for queue in main if depths.get(queue) is not None}
    if missing:
        return Check(False, f"queues not declared yet: {', '.join(missing)}", {"queues": found})
    try:
        mismatch = type_probe(settings, main).get(timeout)
    except TimeoutError:
        return Check(False, f"broker did not answer within {timeout:g}s")
    except Exception as error:
        return Check(False, f"broker unreachable: {first_line(error) or type(error).__name__}")
    if mismatch is not None:
        return Check(False, str(mismatch), {"queues": found})
    return Check(True, details={"broker": transport.kind(settings.broker_url), "queues": found})


# -- workers and relays ----------------------------------------------------------------------

Kind = Literal["worker", "relay"]


def check_workers(
    settings: Settings | None = None, host: str | None = None, *, timeout: float = PROBE_TIMEOUT_SECONDS
) -> Check:
    """At least one worker (on `host`, when given) sent a heartbeat within the liveness window."""
    return check_heartbeats("worker", settings, host, timeout=timeout)


def check_relays(
    settings: Settings | None = None, host: str | None = None, *, timeout: float = PROBE_TIMEOUT_SECONDS
) -> Check:
    """At least one relay (on `host`, when given) sent a heartbeat within the liveness window."""
    return check_heartbeats("relay", settings, host, timeout=timeout)


def check_heartbeats(
    kind: Kind, settings: Settings | None = None, host: str | None = None, *, timeout: float
) -> Check:
    settings = settings or get_settings()
    url = settings.database_url
    probe = shared_probe((kind, url, host), lambda: _heartbeats(kind, url, host), 0.0)
    return _bounded(probe, f"database ({kind} heartbeats)", timeout)


def _heartbeats(kind: Kind, url: str, host: str | None) -> Check:
    window = liveness_window_seconds()
    try:
        with probe_engine(url).connect() as conn:
            live = int(conn.execute(LIVE[kind], live_params(host)).scalar_one())
    except Exception as error:
        return Check(False, f"cannot read heartbeats: {first_line(error)}")
    where = f" on host {host}" if host else ""
    if live == 0:
        return Check(False, f"no {kind}{where} sent a heartbeat in the last {window:g}s", {"live": 0})
    return Check(True, details={"live": live})


def this_host() -> str:
    return socket.gethostname()
