"""Test set-up: the real PostgreSQL and RabbitMQ, with a database and vhost of this run's own.

Unit tests need neither. Integration, end-to-end and fault tests use both; locally they
skip when a service is down, in CI (CI=true) they fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import infra as services

if TYPE_CHECKING:
    from tests.support.stack import Stack

INFRA = services.new_infra()
SMTP_PORT = services.free_port()

# Settings are read from the environment: set it before anything imports the app. Tests
# shrink time (leases, backoff, heartbeats) so failure paths run in seconds.
TEST_ENV = {
    "ENVIRONMENT": "test",
    "DATABASE_URL": INFRA.database_url,
    "BROKER_URL": INFRA.broker_url,
    "SMTP_HOST": "127.0.0.1",
    "SMTP_PORT": str(SMTP_PORT),
    "SMTP_TIMEOUT": "5",
    "RETRY_BACKOFF_BASE": "0.1",
    "RETRY_BACKOFF_MAX": "1.0",
    "LEASE_SECONDS": "3",
    "HEARTBEAT_SECONDS": "0.5",
    # No worker exporter (several workers run at once here); a metrics test picks a free port.
    "WORKER_METRICS_PORT": "0",
    "RELAY_METRICS_PORT": "0",
    "RELAY_SWEEP_SECONDS": "0.2",
    "WORKER_SHUTDOWN_SECONDS": "10",
    # Several stacks may run on one machine (max_connections is 100): keep pools small.
    "DB_POOL_SIZE": "4",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    # A revoked key stops working this fast in every API process of a test.
    "KEYS_CACHE_SECONDS": "0.5",
    # Generous: the suite's own load must never meet it (one test lowers it).
    "RATE_LIMIT": "100000/second",
    # Likewise for refusals: the suite refuses many keys from one address (the refusal tests
    # put the defaults back).
    "REFUSAL_LIMIT_PER_ADDRESS": "100000/minute",
    "REFUSAL_LIMIT_GLOBAL": "100000/minute",
    # Dramatiq's idle threads wake this often (ms; 1000 by default): a worker stops in about
    # 1.8 s instead of 2.8, and the suite stops a worker some forty times.
    "dramatiq_worker_timeout": "100",
}
os.environ.update(TEST_ENV)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _needs_services(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in ("integration", "e2e", "faults", "browser"))


# The fixtures that hand out the run's one shared api + relay + worker stack, by name and the
# module defining them (a test module may define a `stack` of its own).
SHARED_STACK_FIXTURES = {"stack": "tests.conftest", "live": "tests.client.conftest"}


def uses_shared_stack(item: pytest.Item | None) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name, module in SHARED_STACK_FIXTURES.items():
        definitions = info.name2fixturedefs.get(name, ())
        if definitions and getattr(definitions[-1].func, "__module__", None) == module:
            return True
    return False


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        folders = (
            ("integration", "integration"),
            ("ledger", "integration"),
            ("e2e", "e2e"),
            ("faults", "faults"),
            ("cluster", "faults"),
        )
        for folder, marker in folders:
            if folder in path.parts:
                item.add_marker(getattr(pytest.mark, marker))
    # The compose tests run last: their engine, images and stack are made in the background
    # meanwhile (tests/compose/conftest.py), minutes that would otherwise be waited out.
    items.sort(key=lambda item: "compose" in Path(str(item.fspath)).parts)
    # The tests of the shared stack run one after another (in their order), where the first of
    # them stood: the stack starts before the first and stops after the last, so no other test
    # ever meets its relay and worker on the run's database and vhost.
    shared = [item for item in items if uses_shared_stack(item)]
    if shared:
        first = items.index(shared[0])
        rest = [item for item in items if not uses_shared_stack(item)]
        items[:] = rest[:first] + shared + rest[first:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    if not uses_shared_stack(nextitem):
        SHARED_STACK.stop()
    return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    SHARED_STACK.stop()  # after -x or an interrupt too


@pytest.fixture(scope="session")
def infra() -> Iterator[services.Infra]:
    problems = [p for p in (services.postgres_problem(), services.rabbitmq_problem()) if p]
    if problems:
        message = "; ".join(problems) + " (scripts/services.sh starts stopped local services)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    services.create(INFRA)
    try:
        from app.ledger.migrate import upgrade
        from tests.support.keys import ENV, make_key

        upgrade(INFRA.database_url)
        os.environ[ENV] = make_key(["enqueue", "read", "operate", "metrics"], name="test-every-scope")
        yield INFRA
    finally:
        from app.ledger.engines import dispose_sync_engines
        from app.operate.health import close_probe_engines

        dispose_sync_engines()
        close_probe_engines()
        services.drop(INFRA)


@pytest.fixture
def clean_ledger(infra: services.Infra) -> services.Infra:
    """An empty ledger and empty queues for the test."""
    _reset(infra)
    return infra


def _reset(infra: services.Infra) -> None:
    import psycopg

    from tests.support.faults import purge_queues

    # A process of the test before may still be reading (a relay or worker on its way out): its
    # locks and the TRUNCATE's can meet in a circle, which PostgreSQL breaks by failing one.
    for attempt in range(5):
        try:
            with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
                conn.execute(
                    "TRUNCATE jobs, job_attempts, workers, relays, job_artifacts, stale_dead_letters,"
                    " schedules, dashboard_sessions, paused_queues, flow_rate_windows, job_events,"
                    " webhooks, webhook_deliveries, workflows CASCADE"
                )
            break
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(0.2)
    purge_queues(infra.broker_url)


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[object]:
    from tests.support.smtp import SmtpServer

    with SmtpServer(SMTP_PORT) as server:
        yield server


class SharedStack:
    """The run's one api + relay + worker (`stack`, `live`), started for the first test that
    asks for it and stopped after the last (see `pytest_collection_modifyitems`)."""

    def __init__(self) -> None:
        self.running: Stack | None = None

    def fresh(self, infra: services.Infra, tmp_path_factory: pytest.TempPathFactory) -> Stack:
        """The stack as `start_all` left it, with an empty ledger and empty queues: what an
        earlier test added goes, what it stopped or started otherwise starts again, and with
        jobs left unfinished the relay and worker start again (nothing of theirs in memory)."""
        from tests.support.stack import Stack

        if self.running is None:
            _reset(infra)
            self.running = Stack(workdir=tmp_path_factory.mktemp("stack"), env=dict(os.environ))
            self.running.start_all()
        else:
            restart = ["relay", "worker"] if _unfinished(infra) else []
            self.running.restore(restart, between=lambda: _reset(infra))
        self.running.begin_test()
        self.running.wait_ready()
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            running, self.running = self.running, None
            running.stop()


SHARED_STACK = SharedStack()


def _unfinished(infra: services.Infra) -> bool:
    import psycopg

    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM jobs WHERE state NOT IN ('succeeded', 'dead'))"
        ).fetchone()
    return bool(row and row[0])


@pytest.fixture
def stack(clean_ledger: services.Infra, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """api + relay + worker as subprocesses against this run's database and vhost, shared by the
    tests that use them; each test begins with an empty ledger and queues (see `SharedStack`)."""
    return SHARED_STACK.fresh(clean_ledger, tmp_path_factory)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis db number of this run's own on the shared Redis, flushed (only it) at the end."""
    from tests.support import redis_db as dbs

    problem = dbs.redis_problem()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    db = dbs.claim_db()
    try:
        yield db
    finally:
        dbs.release_db(db)


@pytest.fixture
def redis_url(redis_db: int) -> str:
    """BROKER_URL of this run's Redis db, emptied for the test."""
    from tests.support import redis_db as dbs

    dbs.empty_db(redis_db)
    return dbs.url(redis_db)
