"""`conveyor jobs|dlq|enqueue|workers|stats` against the real ledger and broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import UUID

import psycopg
import pytest
from click.testing import Result
from typer.testing import CliRunner

from app.cli.commands import cli
from tests.support.infra import Infra, free_port
from tests.support.seed import (
    dead_copies,
    declare_queues,
    insert_job,
    insert_worker,
    job_row,
    publish_dead_copy,
)

FLAKY = "app.tasks.example.flaky"
ECHO = "app.tasks.example.echo"


def conveyor(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture
def ledger(clean_ledger: Infra) -> Infra:
    declare_queues()
    return clean_ledger


@pytest.fixture
def broken_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from app.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


# -- enqueue --------------------------------------------------------------------------------


def test_enqueue_validates_the_payload_stores_the_job_and_prints_only_its_id(ledger: Infra) -> None:
    result = conveyor("enqueue", "echo", "--payload", '{"message": "from the shell"}', "--priority", "3")
    assert result.exit_code == 0, result.output
    job_id = UUID(result.stdout.strip())
    with psycopg.connect(ledger.libpq_url) as conn:
        row = conn.execute(
            "SELECT task, state, payload, priority FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row == (ECHO, "queued", {"message": "from the shell"}, 3)


def test_enqueue_refuses_an_invalid_payload_with_exit_code_2_naming_the_field(ledger: Infra) -> None:
    result = conveyor("enqueue", ECHO, "--payload", '{"mesage": "typo"}')
    assert result.exit_code == 2
    assert "message" in result.stderr
    assert "mesage" in result.stderr
    assert result.stdout == ""
    assert _count_jobs(ledger) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "app.tasks.example.nope"],
        ["enqueue", "echo", "--payload", "{not json"],
        ["enqueue", "echo", "--payload", "[1, 2]"],
        ["enqueue", "echo", "--priority", "10"],
        ["enqueue", "echo", "--delay", "-1"],
    ],
)
def test_enqueue_treats_a_wrong_command_line_as_a_usage_error(ledger: Infra, args: list[str]) -> None:
    result = conveyor(*args)
    assert result.exit_code == 2, result.output
    assert _count_jobs(ledger) == 0


def test_enqueue_with_the_same_idempotency_key_returns_the_first_job_and_refuses_another_body(
    ledger: Infra,
) -> None:
    first = conveyor("enqueue", "echo", "-p", '{"message": "a"}', "--idempotency-key", "k-1")
    again = conveyor("enqueue", "echo", "-p", '{"message": "a"}', "--idempotency-key", "k-1")
    other = conveyor("enqueue", "echo", "-p", '{"message": "b"}', "--idempotency-key", "k-1")
    assert first.exit_code == 0
    assert again.exit_code == 0
    assert first.stdout == again.stdout
    assert other.exit_code == 1
    assert "Idempotency-Key" in other.stderr
    assert _count_jobs(ledger) == 1


# -- jobs -----------------------------------------------------------------------------------


def test_jobs_list_filters_by_state_and_task_newest_first(ledger: Infra) -> None:
    old_dead = insert_job(ledger, task=FLAKY, payload={"fail_times": 9}, state="dead")
    insert_job(ledger, state="succeeded")
    new_dead = insert_job(ledger, task=FLAKY, payload={"fail_times": 9}, state="dead")
    insert_job(ledger, state="dead")

    result = conveyor("jobs", "list", "--state", "dead", "--task", "flaky", "--json")
    assert result.exit_code == 0, result.output
    assert [item["id"] for item in json.loads(result.stdout)["items"]] == [str(new_dead), str(old_dead)]

    table = conveyor("jobs", "list", "--state", "dead", "--task", "flaky")
    assert table.exit_code == 0
    assert str(new_dead) in table.stdout
    assert str(old_dead) in table.stdout
    assert table.stdout.count(ECHO) == 0


def test_jobs_list_refuses_an_unknown_state_and_a_limit_out_of_range(ledger: Infra) -> None:
    assert conveyor("jobs", "list", "--state", "sleeping").exit_code == 2
    assert conveyor("jobs", "list", "--limit", "0").exit_code == 2
    assert conveyor("jobs", "list", "--limit", "201").exit_code == 2


def test_jobs_show_prints_the_job_with_every_attempt(ledger: Infra) -> None:
    job_id = insert_job(ledger, errors=["TransientError: one", "PermanentError: two"])
    result = conveyor("jobs", "show", str(job_id))
    assert result.exit_code == 0, result.output
    assert str(job_id) in result.stdout
    assert "TransientError: one" in result.stdout
    assert "PermanentError: two" in result.stdout

    as_json = json.loads(conveyor("jobs", "show", str(job_id), "--json").stdout)
    assert as_json["state"] == "dead"
    assert [(a["attempt"], a["error"]) for a in as_json["attempts"]] == [
        (1, "TransientError: one"),
        (2, "PermanentError: two"),
    ]


def test_jobs_show_exits_1_for_a_job_that_does_not_exist_and_2_for_a_malformed_id(ledger: Infra) -> None:
    missing = conveyor("jobs", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.exit_code == 1
    assert "not found" in missing.stderr
    assert conveyor("jobs", "show", "not-a-uuid").exit_code == 2


# -- dead letters ---------------------------------------------------------------------------


def test_dlq_list_shows_dead_jobs_with_their_total_and_last_error(ledger: Infra) -> None:
    dead = insert_job(ledger, task=FLAKY, payload={"fail_times": 1}, errors=["PermanentError: boom"])
    insert_job(ledger, state="dead")
    insert_job(ledger, state="succeeded")

    listed = json.loads(conveyor("dlq", "list", "--task", "flaky", "--json").stdout)
    assert listed["total"] == 1
    assert [(item["id"], item["last_error"]) for item in listed["items"]] == [
        (str(dead), "PermanentError: boom")
    ]
    table = conveyor("dlq", "list")
    assert "2 dead job(s)" in table.stdout
    assert "PermanentError: boom" in table.stdout


def test_dlq_replay_by_id_requeues_the_job_and_removes_only_its_stale_dead_letter(ledger: Infra) -> None:
    replayed, kept = insert_job(ledger, attempts=5), insert_job(ledger, attempts=5)
    publish_dead_copy(ledger, kept)
    publish_dead_copy(ledger, replayed)
    publish_dead_copy(ledger, kept)

    result = conveyor("dlq", "replay", str(replayed))
    assert result.exit_code == 0, result.output
    assert "replayed 1 dead job(s)" in result.stdout
    assert "removed 1 stale message(s)" in result.stdout
    assert job_row(ledger, replayed) == {"state": "queued", "run": 2, "attempts": 0}
    assert job_row(ledger, kept) == {"state": "dead", "run": 1, "attempts": 5}
    assert dead_copies(ledger) == [str(kept), str(kept)]


def test_dlq_replay_of_a_job_that_is_not_dead_exits_1_and_still_replays_the_others(ledger: Infra) -> None:
    dead, done = insert_job(ledger), insert_job(ledger, state="succeeded")
    missing = "00000000-0000-4000-8000-000000000000"
    result = conveyor("dlq", "replay", str(dead), str(done), missing)
    assert result.exit_code == 1
    assert f"job {done} is succeeded, not dead" in result.stderr
    assert f"job {missing} not found" in result.stderr
    assert job_row(ledger, dead) == {"state": "queued", "run": 2, "attempts": 0}
    assert job_row(ledger, done) == {"state": "succeeded", "run": 1, "attempts": 0}


def test_dlq_replay_by_task_asks_first_and_does_nothing_when_refused(ledger: Infra) -> None:
    flaky = [insert_job(ledger, task=FLAKY, payload={"fail_times": 1}) for _ in range(3)]
    echo = insert_job(ledger)

    refused = conveyor("dlq", "replay", "--task", FLAKY, input="n\n")
    assert refused.exit_code == 1
    assert "Replay 3 dead job(s) of task app.tasks.example.flaky?" in refused.stdout
    assert {job_row(ledger, j)["state"] for j in flaky} == {"dead"}  # type: ignore[index]

    accepted = conveyor("dlq", "replay", "--task", FLAKY, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert {job_row(ledger, j)["state"] for j in flaky} == {"queued"}  # type: ignore[index]
    assert job_row(ledger, echo) == {"state": "dead", "run": 1, "attempts": 0}


def test_dlq_bulk_operations_walk_every_dead_job_in_chunks(
    ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.operate import actions

    monkeypatch.setattr(actions, "BATCH", 2)
    dead = [insert_job(ledger) for _ in range(5)]
    alive = insert_job(ledger, state="queued")
    result = conveyor("dlq", "replay", "--all", "--yes")
    assert result.exit_code == 0, result.output
    assert "replayed 5 dead job(s)" in result.stdout
    assert {job_row(ledger, j)["run"] for j in dead} == {2}  # type: ignore[index]
    assert job_row(ledger, alive) == {"state": "queued", "run": 1, "attempts": 0}


def test_dlq_purge_all_deletes_every_dead_job_and_empties_the_dead_letter_queues(ledger: Infra) -> None:
    dead = [insert_job(ledger), insert_job(ledger, task=FLAKY, payload={"fail_times": 1})]
    running = insert_job(ledger, state="running")
    for job_id in dead:
        publish_dead_copy(ledger, job_id)

    result = conveyor("dlq", "purge", "--all", "--yes")
    assert result.exit_code == 0, result.output
    assert "purged 2 dead job(s)" in result.stdout
    assert [job_row(ledger, j) for j in dead] == [None, None]
    assert job_row(ledger, running) is not None
    assert dead_copies(ledger) == []


def test_dlq_purge_by_id_asks_even_for_one_job_unless_yes_is_given(ledger: Infra) -> None:
    job_id = insert_job(ledger)
    publish_dead_copy(ledger, job_id)
    refused = conveyor("dlq", "purge", str(job_id), input="\n")
    assert refused.exit_code == 1
    assert job_row(ledger, job_id) is not None

    result = conveyor("dlq", "purge", str(job_id), "-y")
    assert result.exit_code == 0, result.output
    assert job_row(ledger, job_id) is None
    assert dead_copies(ledger) == []


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "replay"],
        ["dlq", "purge", "--yes"],
        ["dlq", "replay", "--all", "--task", FLAKY],
        ["dlq", "purge", "00000000-0000-4000-8000-000000000000", "--all"],
    ],
)
def test_dlq_replay_and_purge_need_exactly_one_selection(ledger: Infra, args: list[str]) -> None:
    insert_job(ledger)
    result = conveyor(*args)
    assert result.exit_code == 2, result.output
    assert "exactly one" in result.stderr


# -- workers and stats ----------------------------------------------------------------------


def test_workers_lists_live_silent_and_stopped_workers(ledger: Infra) -> None:
    live = insert_worker(ledger, host="alpha")
    silent = insert_worker(ledger, host="beta", seconds_ago=120)
    stopped = insert_worker(ledger, host="gamma", stopped=True)

    listed = json.loads(conveyor("workers", "--json").stdout)
    assert {row["id"]: row["status"] for row in listed} == {
        live: "live",
        silent: "silent",
        stopped: "stopped",
    }
    table = conveyor("workers")
    assert table.exit_code == 0
    assert all(worker in table.stdout for worker in (live, silent, stopped))


def test_stats_counts_the_ledger_and_reads_the_queue_depths(ledger: Infra) -> None:
    insert_job(ledger, state="queued", published=False, available_seconds_ago=30)
    insert_job(ledger, state="queued", published=False, available_seconds_ago=-600)  # delayed
    insert_job(ledger, state="succeeded")
    insert_job(ledger, state="dead")
    insert_worker(ledger, host="alpha")

    result = conveyor("stats", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["jobs"] == {
        "queued": 2,
        "running": 0,
        "retrying": 0,
        "succeeded": 1,
        "dead": 1,
        "cancelled": 0,
        "waiting": 0,
    }
    assert stats["outbox_backlog"] == 1
    assert 30 <= stats["oldest_due_seconds"] < 60
    assert stats["live_workers"] == 1
    assert stats["queues"]["default"] == {"ready": 0, "dead": 0}
    assert conveyor("stats").exit_code == 0


@pytest.mark.usefixtures("broken_database")
@pytest.mark.parametrize(
    "args", [["jobs", "list"], ["dlq", "list"], ["workers"], ["enqueue", "echo", "-p", '{"message": "x"}']]
)
def test_a_command_exits_1_with_a_reason_when_the_database_is_unreachable(
    infra: Infra, args: list[str]
) -> None:
    result = conveyor(*args)
    assert result.exit_code == 1
    assert "database unreachable" in result.stderr


def _count_jobs(infra: Infra) -> int:
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])
