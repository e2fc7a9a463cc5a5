"""The API's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter

JOBS_ACCEPTED = Counter("conveyor_jobs_accepted_total", "Jobs accepted (202) by task", ["task"])
