"""What `conveyor worker` loads: the worker's processes hold only what running jobs needs.

DESIGN.md, Performance budget: a worker's whole process tree under 100 MiB RSS. Every module
imported costs each process that holds it; these pin the boundaries that keep it small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from app.cli import worker as worker_command

# Faces and tools a worker never runs: the API, the dashboard, the CLI's commands and their
# libraries, the ORM and the async engine.
NOT_IN_A_WORKER = (
    "fastapi",
    "starlette",
    "jinja2",
    "uvicorn",
    "typer",
    "click",
    "sqlalchemy.orm",
    "sqlalchemy.ext.asyncio",
    "alembic",
    "app.api",
    "app.dashboard",
    "app.cli.commands",
    "app.operate",
    "app.accept",
    "app.relay",
)


def imported_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_the_entry_point_and_the_worker_command_import_nothing_outside_the_standard_library() -> None:
    """Dramatiq's main process forks the worker processes from here: what it holds, each holds."""
    modules = imported_after("import app.cli, app.cli.worker") - imported_after("")
    outside = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"app"}
    assert outside == set(), outside
    assert {m for m in modules if m.startswith("app.")} == {"app.cli", "app.cli.worker"}


def test_the_worker_process_imports_no_api_dashboard_or_cli_code() -> None:
    env = {**os.environ, "BROKER_URL": "stub://", "WORKER_METRICS_PORT": "0"}
    modules = imported_after("import app.execution.alone, app.worker", env)
    assert "app.worker" in modules
    assert [name for name in NOT_IN_A_WORKER if loaded(modules, name)] == []


def test_the_check_would_see_a_face_imported() -> None:
    modules = imported_after("import app.cli.commands")
    assert loaded(modules, "typer")
    assert loaded(modules, "app.cli.commands")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (None, None, None)),
        (["--processes", "2", "--threads", "3"], (2, 3, None)),
        (["-Q", "default", "--queue", "mail"], (None, None, ["default", "mail"])),
    ],
)
def test_the_lean_worker_command_reads_the_options_of_the_full_one(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: tuple[object, ...]
) -> None:
    seen: list[tuple[object, ...]] = []
    monkeypatch.setattr(worker_command, "start", lambda *args: seen.append(args) or 0)
    assert worker_command.main(argv) == 0
    assert seen == [expected]


def test_the_full_worker_command_offers_the_same_options() -> None:
    from typer.main import get_command

    from app.cli.commands import cli

    command = get_command(cli).commands["worker"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in param.opts}
    assert options == {"--processes", "--threads", "--queue", "-Q"}
