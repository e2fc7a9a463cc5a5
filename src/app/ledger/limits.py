"""A job's flow limits as the ledger stores them (apart, so that `jobs` and `flow` both use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Flow:
    """A job's limits: at most `concurrency_limit` running per (task, `concurrency_key`), at most
    `rate_limit` starts per `rate_period` seconds per (task, `rate_key`). '' keys a limit for
    the whole task; None: no such limit."""

    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_key: str | None = None
    rate_limit: int | None = None
    rate_period: float | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "concurrency_key": self.concurrency_key,
            "concurrency_limit": self.concurrency_limit,
            "rate_key": self.rate_key,
            "rate_limit": self.rate_limit,
            "rate_period": self.rate_period,
        }


NO_FLOW = Flow()
