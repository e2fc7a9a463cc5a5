"""The PostgreSQL primary is lost under load and its synchronous standby promoted (DESIGN.md,
"More than one machine"): every job that got a 202 succeeds, none runs twice in effect, the
API answers 503 with Retry-After meanwhile (never 500), and the service comes back by itself.

The whole stack (api, relay, worker) reaches the pair through one multi-host `DATABASE_URL`
in SQLAlchemy's form, the one libpq cannot read itself.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import FAULT_ENV
from tests.support import faults
from tests.support.faults import EFFECT_TASK, Poster
from tests.support.infra import Infra
from tests.support.keys import ENV
from tests.support.pgpair import DATABASE, PgPair
from tests.support.stack import Stack

RATE = 20.0  # jobs/s, steady
FAILOVER_SECONDS = 10
# What a failover manager takes to notice a lost primary before it promotes the standby; longer
# than the API's bound on a request's wait for the database (DB_TIMEOUT_SECONDS, 5 s), so some
# POSTs meanwhile are answered 503 (the others wait and are stored on the new primary).
NOTICED_AFTER_SECONDS = 8.0
# Liveness bounds, not speed: the measured times are printed.
BACK_WITHIN_SECONDS = 90.0
SETTLE_SECONDS = 180.0


def short_job(n: int) -> dict[str, Any]:
    return {"sleep_seconds": 0.05}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def pair_key(pg_pair: PgPair) -> str:
    """The pair's ledger migrated, and a key with every scope in it."""
    from app.access import keys
    from app.ledger.engines import dispose_sync_engines, sync_engine
    from app.ledger.migrate import upgrade

    url = pg_pair.url(form="sqlalchemy")
    upgrade(url)
    with sync_engine(url).begin() as conn:
        key = keys.create(conn, "failover", keys.parse_scopes(["enqueue", "read", "operate", "metrics"]))
    dispose_sync_engines()
    return key


@pytest.fixture
def failover_stack(pg_pair: PgPair, pair_key: str, infra: Infra, tmp_path: Path) -> Iterator[Stack]:
    """api + relay + worker on the pair's multi-host URL and this run's vhost, with a key of
    the pair's own ledger."""
    key = pair_key
    url = pg_pair.url(form="sqlalchemy")
    faults.purge_queues(infra.broker_url)
    env = dict(os.environ) | FAULT_ENV
    env |= {
        "DATABASE_URL": url,
        "BROKER_URL": infra.broker_url,
        ENV: key,
        "DB_FAILOVER_SECONDS": str(FAILOVER_SECONDS),
    }
    stack = Stack(workdir=tmp_path, env=env, diagnostics_over_http=True)
    previous_key = os.environ.get(ENV)
    os.environ[ENV] = key  # the poster's client sends the pair's key
    try:
        stack.start_api()
        stack.start_relay()
        stack.start_worker(threads=8)
        stack.wait_ready()
        yield stack
    finally:
        if previous_key is not None:
            os.environ[ENV] = previous_key
        stack.stop()
        if pg_pair.standby.pid() is None:
            pg_pair.rebuild_standby()  # a pair again, for whatever runs next (about a second)


@pytest.mark.anyio
async def test_a_write_that_reaches_a_standby_is_a_503_never_a_500(
    pg_pair: PgPair, pair_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pooled connection meets when its server was demoted, or what a host list without
    `target_session_attrs` meets once the primary is away: a server that refuses writes."""
    import httpx

    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines
    from app.settings import get_settings

    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{pg_pair.standby.port}/{DATABASE}"
    )
    get_settings.cache_clear()
    application = create_app()
    headers = {"authorization": f"Bearer {pair_key}"}
    body = {"task": "app.tasks.example.echo", "payload": {"message": "to a standby"}}
    try:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://conveyor.test", headers=headers
        ) as api:
            answers = [await api.post("/api/v1/jobs", json=body) for _ in range(3)]
    finally:
        intake = getattr(application.state, "intake", None)
        if intake is not None:
            await intake.close()
        await dispose_async_engines()
        monkeypatch.undo()
        get_settings.cache_clear()
    assert [answer.status_code for answer in answers] == [503, 503, 503], [a.text for a in answers]
    assert all(answer.headers.get("retry-after") for answer in answers)


def test_the_primary_lost_and_its_standby_promoted_under_load_loses_no_job_and_doubles_no_effect(
    failover_stack: Stack, pg_pair: PgPair, record_property: Any
) -> None:
    ledger = faults.Ledger(pg_pair.libpq_url())
    # The API bounds a request's wait for the database by DB_TIMEOUT_SECONDS (5 s): a client
    # that waits a little longer sees every answer.
    poster = Poster(failover_stack.base_url, short_job, RATE, task=EFFECT_TASK, timeout=15.0).start()
    try:
        time.sleep(5)
        accepted_before = len(poster.accepted)
        refused_before = sum(poster.refused.values())
        lost_at = time.time()
        pg_pair.stop_primary()
        time.sleep(NOTICED_AFTER_SECONDS)
        refused_in_gap = sum(poster.refused.values()) - refused_before
        pg_pair.promote()
        promoted_at = time.time()
        deadline = time.monotonic() + BACK_WITHIN_SECONDS
        while not any(at > promoted_at for _, at in poster.accepted) and time.monotonic() < deadline:
            time.sleep(0.05)
        back_at = min((at for _, at in poster.accepted if at > promoted_at), default=None)
        time.sleep(5)  # and it stays back
    finally:
        poster.stop()

    assert back_at is not None, (
        f"no 202 in {BACK_WITHIN_SECONDS}s after the promotion: {poster.refused}\n{failover_stack.logs()}"
    )
    jobs = ledger.wait_terminal(poster.ids, timeout=SETTLE_SECONDS)
    settled_at = time.time()
    finished_after = [job["finished_at"].timestamp() for job in jobs.values()]
    worked_again_at = min((at for at in finished_after if at > promoted_at), default=settled_at)
    record_property("first_202_after_promotion_seconds", round(back_at - promoted_at, 2))
    record_property("first_finish_after_promotion_seconds", round(worked_again_at - promoted_at, 2))
    print(
        f"\nPostgreSQL failover: {len(poster.ids)} jobs accepted ({accepted_before} before the loss), "
        f"refused {dict(poster.refused)}; the first 202 {back_at - promoted_at:.2f}s after the promotion "
        f"({back_at - lost_at:.2f}s after the primary was lost); the first job finished "
        f"{worked_again_at - promoted_at:.2f}s after the promotion (worker and relay back); every job done "
        f"{settled_at - promoted_at:.1f}s after the promotion"
    )
    assert poster.dishonest == [], "every refusal a JSON 503 with Retry-After, never a 500"
    assert set(poster.refused) <= {"503"}, f"no request went unanswered: {poster.refused}"
    assert refused_in_gap > 0, "the API answered 503 while no server took writes"
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": len(poster.ids)}
    assert ledger.effects() == Counter(dict.fromkeys(poster.ids, 1)), "each job's effect committed once"
