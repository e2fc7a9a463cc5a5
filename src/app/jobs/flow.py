"""A task's flow limits as declared on `@task` (concurrency and rate per key), and each job's
share of them: the key values read from its payload once, when the job is made."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from app.ledger.limits import Flow

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `limit` starts per `period` seconds (`"10/second"`, `"100/minute"`, `"5/hour"`)."""

    limit: int
    period: float
    text: str


def parse_rate(text: str) -> Rate:
    """Raises ValueError for anything but `<N>/second|minute|hour` with N ≥ 1."""
    match = _RATE.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"rate {text!r} is not '<N>/second', '<N>/minute' or '<N>/hour' with N >= 1")
    return Rate(int(match.group(1)), PERIODS[match.group(2)], f"{int(match.group(1))}/{match.group(2)}")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a task declares: at most `concurrency` running per value of payload field
    `concurrency_key` (None: for the whole task), at most `rate` starts per value of `rate_key`."""

    concurrency: int | None = None
    concurrency_key: str | None = None
    rate: Rate | None = None
    rate_key: str | None = None

    @property
    def any(self) -> bool:
        return self.concurrency is not None or self.rate is not None


NO_LIMITS = Limits()


def describe(limits: Limits) -> str:
    """'2 at once per tenant; 5/second per partner' ('' for a task without limits)."""
    parts = []
    if limits.concurrency is not None:
        per = f" per {limits.concurrency_key}" if limits.concurrency_key else ""
        parts.append(f"{limits.concurrency} at once{per}")
    if limits.rate is not None:
        parts.append(limits.rate.text + (f" per {limits.rate_key}" if limits.rate_key else ""))
    return "; ".join(parts)


def declare(
    payload: type[BaseModel],
    concurrency: int | None,
    concurrency_key: str | None,
    rate: str | None,
    rate_key: str | None,
) -> Limits:
    """The limits of `@task(...)`, checked when the task module is imported."""
    if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
        raise ValueError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    if concurrency_key is not None and concurrency is None:
        raise ValueError("concurrency_key needs concurrency=N")
    if rate_key is not None and rate is None:
        raise ValueError("rate_key needs rate='N/second|minute|hour'")
    for key in (concurrency_key, rate_key):
        if key is not None and key not in payload.model_fields:
            raise ValueError(f"{key!r} is not a field of {payload.__name__}")
    return Limits(concurrency, concurrency_key, None if rate is None else parse_rate(rate), rate_key)


def key_value(model: BaseModel, field: str | None) -> str:
    """The key a payload gives a limit: its field's value as text ('' for a whole-task limit)."""
    if field is None:
        return ""
    value: Any = getattr(model, field)
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def flow_of(limits: Limits, model: BaseModel) -> Flow | None:
    """The columns of a new job of a task with these limits; None for a task without any."""
    if not limits.any:
        return None
    rate = limits.rate
    return Flow(
        concurrency_key=None if limits.concurrency is None else key_value(model, limits.concurrency_key),
        concurrency_limit=limits.concurrency,
        rate_key=None if rate is None else key_value(model, limits.rate_key),
        rate_limit=None if rate is None else rate.limit,
        rate_period=None if rate is None else rate.period,
    )
