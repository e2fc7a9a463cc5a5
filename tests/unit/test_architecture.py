"""The shape of the code, kept: one import direction, no circles, small modules, one writer of the ledger.

The import rules are import-linter contracts in pyproject.toml (`lint-imports`, also run by
`make lint`); these tests run them too, and check what a contract cannot express.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "app"
LEDGER = SRC / "ledger"
MAX_MODULE_LINES = 400
# A statement that writes one of the ledger's tables, in SQL or in SQLAlchemy Core.
LEDGER_TABLES = (
    r"(?:jobs|job_attempts|job_artifacts|job_artifact_chunks|workers|relays|stale_dead_letters|schedules"
    r"|api_keys|conveyor_secrets|dashboard_sessions|audit_log|job_events"
    r"|webhooks|webhook_deliveries|webhook_fanout|workflows)"
)
WRITES_A_LEDGER_TABLE = re.compile(
    rf"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE)\s+{LEDGER_TABLES}\b"
    rf"|\b{LEDGER_TABLES}\.(?:insert|update|delete)\(",
    re.IGNORECASE,
)


def python_modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_import_contracts_hold_no_circle_and_no_import_running_back_up() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_import_contracts_catch_an_import_running_back_up(tmp_path: Path) -> None:
    """The check above can fail: a ledger module importing a face breaks the layers contract."""
    offender = LEDGER / "zz_offender.py"
    offender.write_text("from app.api import deps  # noqa: F401\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        result = subprocess.run(
            [str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    finally:
        offender.unlink()
    assert result.returncode != 0
    assert "app.ledger.zz_offender -> app.api.deps" in result.stdout


@pytest.mark.parametrize("module", python_modules(), ids=lambda path: str(path.relative_to(SRC)))
def test_no_module_is_longer_than_four_hundred_lines(module: Path) -> None:
    lines = len(module.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module.relative_to(REPO)} has {lines} lines"


def test_only_the_ledger_package_writes_the_ledger_tables() -> None:
    writers = {
        str(path.relative_to(REPO))
        for path in [*SRC.rglob("*.py"), *SRC.rglob("*.sql")]
        if WRITES_A_LEDGER_TABLE.search(path.read_text()) and LEDGER not in path.parents
    }
    assert writers == set()


def test_the_writer_check_would_see_a_write_in_sql_or_in_core() -> None:
    assert WRITES_A_LEDGER_TABLE.search("UPDATE jobs SET state = 'dead'")
    assert WRITES_A_LEDGER_TABLE.search("delete from job_attempts where true")
    assert WRITES_A_LEDGER_TABLE.search("conn.execute(job_artifacts.insert().values(x=1))")
    assert not WRITES_A_LEDGER_TABLE.search("SELECT count(*) FROM jobs")


def test_the_api_the_relay_and_the_cli_build_no_dramatiq_broker() -> None:
    """Only `app.worker` builds a broker; importing the others, and making the app and a relay,
    leaves Dramatiq without one (`dramatiq.get_broker()` would otherwise make a default)."""
    script = textwrap.dedent(
        """
        import dramatiq.broker
        import app.asgi, app.cli.commands, app.relay.outbox, app.accept.intake, app.operate.actions
        app.asgi.create_app()
        app.relay.outbox.Relay()
        assert dramatiq.broker.global_broker is None, dramatiq.broker.global_broker
        import app.worker
        assert dramatiq.broker.global_broker is app.worker.broker
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_sending_a_bare_dramatiq_message_of_a_task_raises_and_says_to_use_enqueue() -> None:
    """`actor.send()` would put a message with no ledger row on the queue: a silent dead letter."""
    script = textwrap.dedent(
        """
        import app.worker
        from app.errors import UseEnqueue
        from app.tasks.example import echo
        actor = app.worker.broker.get_actor("app.tasks.example.echo")
        for attempt in (lambda: actor.send(message="x"), lambda: actor.send_with_options(kwargs={}),
                        lambda: echo.send(message="x"), lambda: echo.delay(message="x")):
            try:
                attempt()
            except UseEnqueue as error:
                assert "echo.enqueue(" in str(error), error
            else:
                raise AssertionError("sent")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
