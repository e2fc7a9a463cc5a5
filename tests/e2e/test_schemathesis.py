"""The HTTP contract as a property: Schemathesis drives every route of the OpenAPI document
against the real processes, in every phase (examples, coverage, fuzzing, stateful), and no
check may fail: no server error, invalid data refused, every status documented, every
response as its schema says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.keys import full_key
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parents[2]

CHECKS = "not_a_server_error,negative_data_rejection,status_code_conformance,response_schema_conformance"
# A fixed seed makes a failure in CI reproducible; SCHEMATHESIS_SEED explores other cases.
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261201")
MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100")
# Invalid data may also be refused for its size: a batch past `maxItems` of long strings is
# larger than MAX_BODY_BYTES, and its 413 (documented on every route with a body) is a refusal.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"
]
"""


def test_schemathesis_finds_no_failure_in_any_phase(stack: Stack, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    command = [
        str(schemathesis),
        f"--config-file={tmp_path / 'schemathesis.toml'}",
        "run",
        f"{stack.base_url}/openapi.json",
        "--phases=examples,coverage,fuzzing,stateful",
        f"--checks={CHECKS}",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        # The run's key with every scope: the contract behind the key is what is fuzzed (each
        # route's 401 and 403 are specified in tests/integration/test_access.py).
        f"--header=Authorization: Bearer {full_key()}",
        # The event stream never ends by design (its contract is specified in
        # tests/integration/test_events.py and tests/e2e/test_events_e2e.py).
        "--exclude-path=/api/v1/events",
        # A wait holds its answer up to 60 s by design (the hooks keep fuzzed ones short).
        "--request-timeout=65",
        # One: Hypothesis describes its strategies' lambdas with `ast.parse`, which on Python 3.11
        # fails at random when two threads parse at once ("AST constructor recursion depth
        # mismatch", a SystemError of the interpreter), reported as a runtime error of the run.
        "--workers=1",
        "--no-color",
    ]
    hooks = {"SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, **hooks}
    )
    # The fuzzed `sleep` jobs would hold the worker's graceful stop for its whole grace period;
    # how a worker stops is specified elsewhere (tests/faults), so this one is killed.
    stack.processes["worker"].kill()
    summary = result.stdout[result.stdout.find("SUMMARY") :] if "SUMMARY" in result.stdout else result.stdout
    print(summary)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Stateful" in result.stdout
    assert "failures" not in summary.splitlines()[-1], summary
