"""`conveyor enqueue TASK --file jobs.jsonl`: validated whole, then stored in batches."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
from click.testing import Result
from typer.testing import CliRunner

from app.cli.commands import cli
from tests.integration.conftest import count_jobs
from tests.support.infra import Infra


def conveyor(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def jsonl(path: Path, count: int, bad: dict[int, str] | None = None) -> Path:
    """`count` echo payloads, one a line; `bad` replaces lines by number (1-based)."""
    lines = [orjson.dumps({"message": f"line {n}"}).decode() for n in range(1, count + 1)]
    for number, text in (bad or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_file_of_2500_lines_enqueues_2500_jobs_in_order(clean_ledger: Infra, tmp_path: Path) -> None:
    result = conveyor(
        "enqueue", "echo", "--file", str(jsonl(tmp_path / "jobs.jsonl", 2500)), "--priority", "2"
    )
    assert result.exit_code == 0, result.output
    assert "enqueued 2500 job(s) of app.tasks.example.echo" in result.stdout
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        rows = conn.execute(
            "SELECT payload->>'message', priority FROM jobs ORDER BY created_at, id"
        ).fetchall()
    assert len(rows) == 2500
    assert {priority for _, priority in rows} == {2}
    assert {message for message, _ in rows} == {f"line {n}" for n in range(1, 2501)}


def test_a_bad_line_stops_the_file_with_its_number_before_anything_is_stored(
    clean_ledger: Infra, tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "jobs.jsonl", 2500, bad={1777: '{"message": 5}'})
    result = conveyor("enqueue", "echo", "--file", str(path))
    assert result.exit_code == 2
    assert "line 1777: message: Input should be a valid string" in result.output
    assert "nothing was stored" in result.output
    assert count_jobs(clean_ledger) == 0


def test_lines_that_are_not_json_objects_are_each_named(clean_ledger: Infra, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "jobs.jsonl", 10, bad={2: "{not json", 5: "[1, 2]", 9: '{"message": "a\\u0000"}'})
    result = conveyor("enqueue", "echo", "--file", str(path))
    assert result.exit_code == 2
    assert "line 2: not JSON" in result.output
    assert "line 5: a payload must be a JSON object" in result.output
    assert "line 9: message: must not contain a NUL character" in result.output
    assert count_jobs(clean_ledger) == 0


def test_a_file_with_an_idempotency_key_run_twice_stores_its_jobs_once(
    clean_ledger: Infra, tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "jobs.jsonl", 1500)
    first = conveyor("enqueue", "echo", "--file", str(path), "--idempotency-key", "import-9")
    assert first.exit_code == 0, first.output
    again = conveyor("enqueue", "echo", "--file", str(path), "--idempotency-key", "import-9")
    assert again.exit_code == 0, again.output
    assert "enqueued 0 job(s)" in again.stdout
    assert "1500 were stored before" in again.stdout
    assert count_jobs(clean_ledger) == 1500


def test_a_payload_and_a_file_together_are_a_usage_error(clean_ledger: Infra, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "jobs.jsonl", 1)
    result = conveyor("enqueue", "echo", "--file", str(path), "--payload", '{"message": "x"}')
    assert result.exit_code == 2
    assert conveyor("enqueue", "echo", "--file", str(tmp_path / "missing.jsonl")).exit_code == 2
    assert count_jobs(clean_ledger) == 0


def test_lines_whose_unique_key_is_in_flight_are_counted_as_duplicates_not_stored(
    clean_ledger: Infra, tmp_path: Path
) -> None:
    path = tmp_path / "accounts.jsonl"
    accounts = ["acme", "globex", "acme", "initech", "globex"]
    path.write_text("\n".join(orjson.dumps({"account": a}).decode() for a in accounts) + "\n")
    first = conveyor("enqueue", "sync_account", "--file", str(path))
    assert first.exit_code == 0, first.output
    assert "enqueued 3 job(s) of app.tasks.example.sync_account; 2 were duplicates" in first.stdout
    again = conveyor("enqueue", "sync_account", "--file", str(path))
    assert "enqueued 0 job(s) of app.tasks.example.sync_account; 5 were duplicates" in again.stdout
    assert count_jobs(clean_ledger) == 3
