"""`conveyor loadtest` against the real processes: what it prints is what the ledger holds."""

from __future__ import annotations

import re
import subprocess

import psycopg

from tests.support.infra import Infra
from tests.support.stack import CONVEYOR, Stack

ECHO = "app.tasks.example.echo"
FLAKY = "app.tasks.example.flaky"


def loadtest(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONVEYOR, "loadtest", "--api", stack.base_url, *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def printed(output: str, measure: str) -> str:
    match = re.search(rf"^\s*{re.escape(measure)}\s+(\S.*?)\s*$", output, re.MULTILINE)
    assert match, f"`{measure}` not printed:\n{output}"
    return match.group(1)


def ledger_counts(infra: Infra, task: str) -> dict[str, int]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs WHERE task = %s GROUP BY state", [task])
        return {str(state): int(count) for state, count in rows}


def test_loadtest_reports_succeeded_and_dead_jobs_exactly_as_the_ledger_records_them(
    stack: Stack, clean_ledger: Infra
) -> None:
    result = loadtest(stack, "--jobs", "60", "--rate", "60", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ledger_counts(clean_ledger, ECHO) == {"succeeded": 60}
    out = result.stdout
    assert printed(out, "accepted") == "60"
    assert printed(out, "not accepted") == "0"
    assert printed(out, "succeeded") == "60"
    assert printed(out, "dead") == "0"
    assert printed(out, "lost") == "0"
    for measure in ("POST latency p50 / p95 / p99 (ms)", "POST -> succeeded p50 / p95 / p99 (ms)"):
        p50, p95, p99 = (int(v) for v in printed(out, measure).split(" / "))
        assert 0 <= p50 <= p95 <= p99, measure
    assert float(printed(out, "throughput, succeeded (/s)")) > 0

    # A dead job has ended: it is counted as dead, not lost, and the run still passes.
    payload = '{"fail_times": 1, "permanent": true}'
    result = loadtest(stack, "--jobs", "5", "--rate", "50", "--task", FLAKY, "--payload", payload)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ledger_counts(clean_ledger, FLAKY) == {"dead": 5}
    assert printed(result.stdout, "dead") == "5"
    assert printed(result.stdout, "succeeded") == "0"
    assert printed(result.stdout, "lost") == "0"


def test_loadtest_fails_when_accepted_jobs_never_finish(stack: Stack, clean_ledger: Infra) -> None:
    stack.processes["worker"].stop()
    result = loadtest(stack, "--jobs", "10", "--rate", "50", "--timeout", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert printed(result.stdout, "accepted") == "10"
    assert printed(result.stdout, "lost") == "10"
    assert sum(ledger_counts(clean_ledger, ECHO).values()) == 10
