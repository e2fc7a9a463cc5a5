"""Schemathesis hooks for tests/e2e/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

`GET /api/v1/jobs/{id}?wait_seconds=N` holds its answer up to N seconds by design: fuzzed
waits on jobs that never finish would only spend the run's time, so they are kept under a
second (the wait's contract is specified in tests/integration/test_events.py).
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_query(ctx: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if query and isinstance(query.get("wait_seconds"), int | float) and query["wait_seconds"] > 1:
        query["wait_seconds"] = 1
    return query
