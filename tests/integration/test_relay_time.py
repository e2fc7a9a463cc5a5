"""The relay's time work in process, on the real ledger: firing ticks (one job each, however many
relays fire at once), writing the schedules tasks declare in code, and a pruning pass."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine

from app.jobs import registry
from app.jobs.registry import Payload, task
from app.jobs.schedules import Cron, Every
from app.relay import pruning
from app.relay.schedules import Ticker
from app.settings import Settings, get_settings
from tests.support.infra import Infra, free_port

ECHO = "app.tasks.example.echo"


@pytest.fixture
def ledger(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        yield conn


def add_schedule(
    conn: psycopg.Connection[Any], name: str, every: int, due_ago: float, *, paused: bool = False
) -> None:
    """A schedule whose stored next run (a tick of `every`) is `due_ago` seconds in the past."""
    conn.execute(
        """
        INSERT INTO schedules (name, task, queue, payload, max_attempts, every_seconds, paused, next_run_at)
        VALUES (%s, %s, 'default', '{"message": "tick"}', 5, %s, %s,
                to_timestamp(floor(extract(epoch FROM now() - make_interval(secs => %s)) / %s) * %s))
        """,
        (name, ECHO, every, paused, due_ago, every, every),
    )


def ticks_of(conn: psycopg.Connection[Any], name: str) -> list[datetime]:
    rows = conn.execute(
        "SELECT scheduled_for FROM jobs WHERE schedule = %s ORDER BY scheduled_for", (name,)
    ).fetchall()
    return [row[0] for row in rows]


def test_a_due_schedule_fires_its_tick_once_and_moves_to_the_next(ledger: psycopg.Connection[Any]) -> None:
    add_schedule(ledger, "minutely", 60, due_ago=1)
    ticker = Ticker(get_settings())
    assert ticker.fire_due() == 1
    [tick] = ticks_of(ledger, "minutely")
    row = ledger.execute("SELECT next_run_at, last_run_at FROM schedules").fetchone()
    assert row == (tick + timedelta(minutes=1), tick)
    job = ledger.execute("SELECT state, task, payload, max_attempts FROM jobs").fetchone()
    assert job == ("queued", ECHO, {"message": "tick"}, 5)
    assert ticker.fire_due() == 0, "not due again before the next minute"
    assert 0 < ticker.seconds_to_next() <= get_settings().relay_sweep_seconds


def test_relays_firing_at_once_make_one_job_per_tick(ledger: psycopg.Connection[Any]) -> None:
    for n in range(20):
        add_schedule(ledger, f"s{n}", 1, due_ago=3)
    start = threading.Barrier(4)
    made: list[int] = []

    def fire() -> None:
        ticker = Ticker(get_settings())
        start.wait(10)
        made.append(ticker.fire_due())

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    total = 0
    for n in range(20):
        ticks = ticks_of(ledger, f"s{n}")
        assert len(ticks) == len(set(ticks)), "no tick twice"
        assert len(ticks) in (4, 5), "the ticks up to 3 s late, and now's (a second may pass meanwhile)"
        assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks)), ticks
        total += len(ticks)
    assert sum(made) == total


def test_a_paused_schedule_fires_nothing_and_a_long_missed_one_fires_its_latest_tick(
    ledger: psycopg.Connection[Any],
) -> None:
    add_schedule(ledger, "paused", 1, due_ago=3, paused=True)
    add_schedule(ledger, "behind", 60, due_ago=3600)
    Ticker(get_settings()).fire_due()
    assert ticks_of(ledger, "paused") == []
    [latest] = ticks_of(ledger, "behind")
    assert datetime.now(UTC) - latest < timedelta(seconds=61), "the most recent missed tick, alone"


class Nothing(Payload):
    note: str = "declared"


@pytest.fixture
def declared_tasks() -> Iterator[list[str]]:
    names = []
    for schedule in (Every(seconds=3600), Cron("0 4 * * 1", timezone="Europe/Paris")):

        def fn(payload: Nothing, job: object) -> None:
            return None

        fn.__name__ = f"declared_{uuid.uuid4().hex[:8]}"
        spec = task(Nothing, public=False, schedule=schedule)(fn)
        names.append(spec.name)
    yield names
    for name in names:
        registry._registry.pop(name)


def test_the_schedules_tasks_declare_in_code_are_written_when_a_relay_starts(
    ledger: psycopg.Connection[Any], declared_tasks: list[str]
) -> None:
    ticker = Ticker(get_settings())
    assert sorted(ticker.declare()) == sorted(declared_tasks)
    rows = ledger.execute(
        "SELECT name, task, payload, every_seconds, cron, timezone, source FROM schedules"
    ).fetchall()
    hourly, weekly = sorted(rows, key=lambda r: r[3] is None)
    assert hourly[1:] == (hourly[0], {"note": "declared"}, 3600, None, "UTC", "code")
    assert weekly[3:] == (None, "0 4 * * 1", "Europe/Paris", "code")
    assert Ticker(get_settings()).declare() == [], "a second relay changes nothing"


def test_a_schedule_declared_in_code_that_ticks_too_often_is_not_written_and_the_rest_are(
    ledger: psycopg.Connection[Any], declared_tasks: list[str]
) -> None:
    from app.settings import Settings

    strict = Settings(min_schedule_interval_seconds=7200, max_schedules=0)
    _hourly, weekly = declared_tasks
    assert Ticker(strict).declare() == [weekly], "weekly is far enough apart; MAX_SCHEDULES refuses none"
    assert [row[0] for row in ledger.execute("SELECT name FROM schedules")] == [weekly]


def test_a_task_that_declares_a_schedule_needs_a_payload_that_validates_from_nothing() -> None:
    class Needs(Payload):
        x: int

    with pytest.raises(ValueError, match="x"):
        task(Needs, schedule="* * * * *")


def pruned_total(state: str) -> float:
    return REGISTRY.get_sample_value("conveyor_pruned_jobs_total", {"state": state}) or 0.0


def test_a_pruning_pass_deletes_what_retention_lets_go_and_counts_it(
    ledger: psycopg.Connection[Any],
) -> None:
    def job(state: str, finished_ago: float | None, **extra: Any) -> uuid.UUID:
        job_id = uuid.uuid4()
        ledger.execute(
            """
            INSERT INTO jobs (id, task, queue, payload, state, max_attempts, finished_at, available_at)
            VALUES (%s, %s, 'default', '{}', %s, 5,
                    CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s::float8) END,
                    now() + make_interval(secs => %s))
            """,
            (job_id, ECHO, state, finished_ago, finished_ago, extra.get("delay", 0)),
        )
        return job_id

    old = [job("succeeded", 120) for _ in range(5)]
    fresh = job("succeeded", 1)
    dead = job("dead", 120)
    delayed = job("queued", None, delay=3600)
    settings = Settings(retain_succeeded_seconds=60, prune_batch_size=2)
    before = pruned_total("succeeded")
    seen: list[tuple[str, int]] = []
    done = pruning.prune(settings, progress=lambda what, n: seen.append((what, n)))
    assert done.jobs == {"succeeded": 5, "cancelled": 0, "dead": 0}
    assert [n for what, n in seen if what == "succeeded"] == [2, 2, 1], "in batches"
    left = {row[0] for row in ledger.execute("SELECT id FROM jobs").fetchall()}
    assert left == {fresh, dead, delayed}
    assert not left & set(old)
    assert pruned_total("succeeded") - before == 5
    assert pruning.count(settings).jobs == {"succeeded": 0, "cancelled": 0, "dead": 0}


def test_the_pruner_survives_a_failed_pass_and_stops_when_asked(ledger: psycopg.Connection[Any]) -> None:
    nowhere = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    stop = threading.Event()
    assert pruning.Pruner(get_settings(), nowhere).run_once(stop) is None, "the database is away"
    nowhere.dispose()
    working = pruning.Pruner(Settings(prune_interval_seconds=0.05))
    working.start(stop)
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while working.passes < 2 and datetime.now(UTC) < deadline:
        stop.wait(0.05)
    stop.set()
    working.join()
    assert working.passes >= 2
