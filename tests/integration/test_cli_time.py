"""`conveyor schedules list|add|pause|resume|delete` and `conveyor prune` against the real ledger."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import Result
from typer.testing import CliRunner

from app.cli.commands import cli
from tests.support.infra import Infra

ECHO = "app.tasks.example.echo"


def conveyor(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture
def ledger(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        yield conn


def finished(conn: psycopg.Connection[Any], state: str, seconds_ago: float) -> uuid.UUID:
    job_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO jobs (id, task, queue, payload, state, max_attempts, finished_at)"
        " VALUES (%s, %s, 'default', '{}', %s, 5, now() - make_interval(secs => %s))",
        (job_id, ECHO, state, seconds_ago),
    )
    return job_id


def test_a_schedule_is_added_listed_paused_resumed_and_deleted(ledger: psycopg.Connection[Any]) -> None:
    added = conveyor(
        "schedules", "add", "hourly", "--task", "echo", "--payload", '{"message": "hi"}', "--every", "3600"
    )
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == "hourly"
    assert "every 3600s, next run" in added.stderr
    nightly = conveyor(
        "schedules",
        "add",
        "nightly",
        "-t",
        ECHO,
        "-p",
        '{"message": "hi"}',
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Europe/Paris",
    )
    assert nightly.exit_code == 0, nightly.output

    listed = conveyor("schedules", "list")
    assert listed.exit_code == 0, listed.output
    assert "hourly" in listed.stdout
    assert "cron 0 3 * * * (Europe/Paris)" in listed.stdout
    assert conveyor("schedules", "pause", "hourly").stdout.strip() == "paused hourly"
    as_json = json.loads(conveyor("schedules", "list", "--json").stdout)
    assert [(s["name"], s["paused"], s["source"]) for s in as_json] == [
        ("hourly", True, "api"),
        ("nightly", False, "api"),
    ]
    assert conveyor("schedules", "resume", "hourly").exit_code == 0
    assert conveyor("schedules", "delete", "hourly", "--yes").stdout.strip() == "deleted hourly"
    assert [s["name"] for s in json.loads(conveyor("schedules", "list", "--json").stdout)] == ["nightly"]


def test_a_missing_or_taken_schedule_is_exit_1_and_a_bad_one_exit_2(ledger: psycopg.Connection[Any]) -> None:
    base = ["schedules", "add", "s", "--task", "echo", "--payload", '{"message": "hi"}']
    assert conveyor(*base, "--every", "60").exit_code == 0
    taken = conveyor(*base, "--every", "60")
    assert taken.exit_code == 1
    assert "exists already" in taken.stderr
    for name in ("pause", "resume"):
        assert conveyor("schedules", name, "nope").exit_code == 1
    assert conveyor("schedules", "delete", "nope", "--yes").exit_code == 1
    for bad in (["--every", "0"], ["--cron", "61 * * * *"], [], ["--every", "1", "--cron", "* * * * *"]):
        refused = conveyor("schedules", "add", "t", "--task", "echo", "--payload", '{"message": "hi"}', *bad)
        assert refused.exit_code == 2, (bad, refused.output)
    wrong_payload = conveyor("schedules", "add", "t", "--task", "echo", "--every", "60")
    assert wrong_payload.exit_code == 2
    assert "message" in wrong_payload.stderr
    zone = conveyor(
        *["schedules", "add", "t", "-t", "echo", "-p", '{"message": "x"}'],
        "--cron",
        "* * * * *",
        "--timezone",
        "Nowhere/City",
    )
    assert zone.exit_code == 2
    assert "unknown time zone" in zone.stderr


def test_adding_past_max_schedules_is_exit_1_and_too_often_exit_2(
    ledger: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("MAX_SCHEDULES", "1")
    monkeypatch.setenv("MIN_SCHEDULE_INTERVAL_SECONDS", "120")
    get_settings.cache_clear()
    try:
        base = ["schedules", "add", "--task", "echo", "--payload", '{"message": "hi"}']
        often = conveyor(*base[:2], "a", *base[2:], "--every", "60")
        assert often.exit_code == 2
        assert "--every is 60: at least 120" in often.stderr
        assert conveyor(*base[:2], "a", *base[2:], "--cron", "* * * * *").exit_code == 2
        assert conveyor(*base[:2], "a", *base[2:], "--every", "120").exit_code == 0
        full = conveyor(*base[:2], "b", *base[2:], "--every", "120")
        assert full.exit_code == 1
        assert "MAX_SCHEDULES" in full.stderr
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_prune_dry_run_counts_and_prune_deletes_only_what_retention_lets_go(
    ledger: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("RETAIN_SUCCEEDED_SECONDS", "60")
    get_settings.cache_clear()
    try:
        old = [finished(ledger, "succeeded", 3600) for _ in range(3)]
        young = finished(ledger, "succeeded", 1)
        dead = finished(ledger, "dead", 3600)
        dry = conveyor("prune", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.stdout)["jobs"] == {"succeeded": 3, "cancelled": 0, "dead": 0}
        assert ledger.execute("SELECT count(*) FROM jobs").fetchone() == (5,), "a dry run deletes nothing"
        done = conveyor("prune")
        assert done.exit_code == 0, done.output
        assert "deleted 3 finished job(s)" in done.stdout
        left = {row[0] for row in ledger.execute("SELECT id FROM jobs").fetchall()}
        assert left == {young, dead}
        assert not left & set(old)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
