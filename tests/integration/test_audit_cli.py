"""The audit log from the shell: what `conveyor dlq|schedules|keys` do is written as
`cli:<user>@<host>`, bulk actions as one entry with their total, `conveyor audit` shows the
log, and pruning deletes entries past RETAIN_AUDIT_SECONDS.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import Result
from psycopg.rows import dict_row
from typer.testing import CliRunner

from app.cli.commands import cli
from tests.support.infra import Infra
from tests.support.seed import declare_queues, insert_job, publish_dead_copy

FLAKY = "app.tasks.example.flaky"
ME = f"cli:{getpass.getuser()}@{socket.gethostname()}"


def conveyor(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture
def log(clean_ledger: Infra) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    declare_queues()
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("TRUNCATE audit_log")
        yield conn


def entries(log: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(log.execute("SELECT * FROM audit_log ORDER BY id").fetchall())


def actions_of(log: psycopg.Connection[dict[str, Any]]) -> list[tuple[str, str | None, int | None]]:
    return [(e["action"], e["target"], e["count"]) for e in entries(log)]


def test_dlq_replay_and_purge_by_id_record_each_job_they_changed_and_none_they_left(
    clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    dead, other_dead = insert_job(clean_ledger), insert_job(clean_ledger)
    queued = insert_job(clean_ledger, state="queued")
    replayed = conveyor("dlq", "replay", str(dead), str(queued))
    assert replayed.exit_code == 1  # the queued one was left alone
    assert conveyor("dlq", "purge", str(other_dead), "--yes").exit_code == 0
    assert actions_of(log) == [("job.replay", str(dead), None), ("job.discard", str(other_dead), None)]
    assert {(e["key_name"], e["key_id"]) for e in entries(log)} == {(ME, None)}


def test_jobs_cancel_cancels_a_queued_job_asks_a_running_one_refuses_a_finished_one_and_records_each(
    clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    queued = insert_job(clean_ledger, state="queued")
    running = insert_job(clean_ledger, state="running")
    finished = insert_job(clean_ledger, state="succeeded")
    cancelled = conveyor("jobs", "cancel", str(queued))
    assert (cancelled.exit_code, "will not run" in cancelled.output) == (0, True), cancelled.output
    asked = conveyor("jobs", "cancel", str(running))
    assert (asked.exit_code, "asked to stop" in asked.output) == (0, True), asked.output
    refused = conveyor("jobs", "cancel", str(finished))
    assert refused.exit_code == 1
    assert "succeeded" in refused.output
    assert actions_of(log) == [("job.cancel", str(queued), None), ("job.cancel", str(running), None)]
    assert [e["detail"] for e in entries(log)] == [None, {"running": True}]
    assert {e["key_name"] for e in entries(log)} == {ME}
    states = log.execute(
        "SELECT id::text, state, cancel_requested_at IS NOT NULL AS asked FROM jobs WHERE id = ANY(%s)",
        ([queued, running],),
    ).fetchall()
    assert {(r["id"], r["state"], r["asked"]) for r in states} == {
        (str(queued), "cancelled", False),
        (str(running), "running", True),
    }


def test_a_bulk_replay_in_many_batches_is_one_entry_with_the_total_and_the_task(
    clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.operate import actions

    monkeypatch.setattr(actions, "BATCH", 2)
    for _ in range(5):
        insert_job(clean_ledger, task=FLAKY, payload={"fail_times": 1})
    insert_job(clean_ledger)
    result = conveyor("dlq", "replay", "--task", FLAKY, "--yes")
    assert result.exit_code == 0, result.output
    [entry] = entries(log)
    assert (entry["key_name"], entry["action"], entry["count"]) == (ME, "dead.replay_all", 5)
    assert entry["detail"] == {"task": FLAKY}


def test_purge_all_records_the_discarded_jobs_and_the_emptied_dead_letter_queues(
    clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    for _ in range(2):
        publish_dead_copy(clean_ledger, insert_job(clean_ledger))
    result = conveyor("dlq", "purge", "--all", "--yes")
    assert result.exit_code == 0, result.output
    discarded, purged = entries(log)
    assert (discarded["action"], discarded["count"], discarded["detail"]) == (
        "dead.discard_all",
        2,
        {"task": None},
    )
    assert (purged["action"], purged["count"]) == ("dlq.purge", 2)
    assert purged["detail"]["default"] == 2


def test_schedule_and_key_commands_are_recorded_and_a_failed_one_is_not(
    log: psycopg.Connection[dict[str, Any]],
) -> None:
    assert (
        conveyor(
            "schedules", "add", "hourly", "--task", "echo", "--payload", '{"message": "x"}', "--every", "3600"
        ).exit_code
        == 0
    )
    assert (
        conveyor(
            "schedules", "add", "hourly", "--task", "echo", "--payload", '{"message": "x"}', "--every", "60"
        ).exit_code
        == 1
    )
    for verb in ("pause", "resume"):
        assert conveyor("schedules", verb, "hourly").exit_code == 0
    assert conveyor("schedules", "delete", "hourly", "--yes").exit_code == 0
    assert conveyor("schedules", "pause", "hourly").exit_code == 1
    assert conveyor("keys", "create", "robot", "--scopes", "enqueue").exit_code == 0
    assert conveyor("keys", "create", "robot").exit_code == 1
    assert conveyor("keys", "revoke", "robot").exit_code == 0
    assert conveyor("keys", "revoke", "robot").exit_code == 1
    assert actions_of(log) == [
        ("schedule.create", "hourly", None),
        ("schedule.pause", "hourly", None),
        ("schedule.resume", "hourly", None),
        ("schedule.delete", "hourly", None),
        ("key.create", "robot", None),
        ("key.revoke", "robot", None),
    ]
    assert entries(log)[0]["detail"]["every_seconds"] == 3600
    assert entries(log)[4]["detail"] == {"scopes": ["enqueue"]}
    assert {e["key_name"] for e in entries(log)} == {ME}


def test_conveyor_audit_lists_entries_newest_first_with_filters_and_a_cursor(
    log: psycopg.Connection[dict[str, Any]],
) -> None:
    for n in range(4):
        log.execute(
            "INSERT INTO audit_log (key_name, action, target, request_id) VALUES (%s, %s, %s, %s)",
            ("ops" if n % 2 else "cli:someone@box", "job.replay", f"job-{n}", f"req-{n}"),
        )
    table = conveyor("audit")
    assert table.exit_code == 0, table.output
    assert [line.split("│")[4].strip() for line in table.stdout.splitlines() if "job-" in line] == [
        "job-3",
        "job-2",
        "job-1",
        "job-0",
    ]
    assert "req-3" in table.stdout
    assert "ops" in table.stdout
    page = json.loads(conveyor("audit", "--key", "ops", "--limit", "1", "--json").stdout)
    assert [i["target"] for i in page["items"]] == ["job-3"]
    rest = json.loads(conveyor("audit", "--key", "ops", "--cursor", page["next_cursor"], "--json").stdout)
    assert [i["target"] for i in rest["items"]] == ["job-1"]
    assert rest["next_cursor"] is None
    none = conveyor("audit", "--action", "key.revoke")
    assert none.exit_code == 0
    assert "no audit entries match" in none.stderr
    assert conveyor("audit", "--cursor", "nope").exit_code == 2


def test_pruning_deletes_audit_entries_past_their_retention_and_keeps_younger_ones(
    log: psycopg.Connection[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.relay import pruning
    from app.settings import get_settings

    def add(age_days: float, count: int) -> None:
        log.execute(
            "INSERT INTO audit_log (key_name, action, at) SELECT 'ops', 'job.cancel',"
            " now() - make_interval(days => %s) FROM generate_series(1, %s)",
            (age_days, count),
        )

    add(100, 3)  # past the default 90 days
    add(1, 2)
    dry = json.loads(conveyor("prune", "--dry-run", "--json").stdout)
    assert dry["audit_entries"] == 3
    done = conveyor("prune", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["audit_entries"] == 3
    assert len(entries(log)) == 2

    monkeypatch.setenv("RETAIN_AUDIT_SECONDS", "3600")
    monkeypatch.setenv("PRUNE_BATCH_SIZE", "1")
    monkeypatch.setenv("PRUNE_PAUSE_SECONDS", "0")
    get_settings.cache_clear()
    try:
        assert pruning.prune(get_settings()).audit_entries == 2  # the relay's pass, one row a statement
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert entries(log) == []
