"""scripts/test-tools.sh: what `make test` installs for the tests that start servers of their own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-tools.sh"
TOOLS = {
    "chromium": "usr/bin/chromium",
    "prometheus": "usr/bin/promtool",
    "rabbitmq-server": "usr/lib/rabbitmq/bin/rabbitmq-server",
    "postgresql": "usr/lib/postgresql/17/bin/initdb",
    "redis-server": "usr/bin/redis-server",
}


def dry_run(root: Path) -> str:
    env = dict(os.environ) | {"TEST_TOOLS_DRY_RUN": "1", "TEST_TOOLS_PREFIX": str(root)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def install(root: Path, *packages: str) -> None:
    for package in packages:
        path = root / TOOLS[package]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)


def test_a_bare_machine_gets_every_tool_the_suite_starts_itself(tmp_path: Path) -> None:
    assert dry_run(tmp_path) == "would install: chromium prometheus rabbitmq-server postgresql redis-server"


def test_only_the_missing_tools_are_installed(tmp_path: Path) -> None:
    install(tmp_path, "chromium", "prometheus", "rabbitmq-server")
    assert dry_run(tmp_path) == "would install: postgresql redis-server"


def test_a_machine_with_every_tool_installs_nothing(tmp_path: Path) -> None:
    install(tmp_path, *TOOLS)
    assert dry_run(tmp_path) == ""
