"""What the blocking and the asyncio clients share: bodies, answers, and the waiting policy."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import httpx

from conveyor_client._errors import ConveyorError, error_for

Payload = Mapping[str, Any]
JOBS = "/api/v1/jobs"
EVENTS = "/api/v1/events"
USER_AGENT = "conveyor-client/0.1.0"
DEFAULT_TIMEOUT = 10.0
# The longest wait the API holds one request for (`wait_seconds`, 0 to 60).
MAX_WAIT_SECONDS = 60
# The sleeps between polls when the API answered a wait early (one that does not hold waits):
# short at first, for jobs that take a moment, then capped so a long job costs one poll a second.
POLL_FIRST = 0.1
POLL_MAX = 1.0
# A stream with no byte (event or keep-alive comment) for this long is taken for dead.
EVENTS_IDLE_TIMEOUT = 60.0
EVENTS_MAX_RETRIES = 10
# Worth another connection: the API or a proxy before it is away for a moment.
RETRYABLE = frozenset({429, 502, 503, 504})


def headers(key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    merged = {"user-agent": USER_AGENT, **(extra or {})}
    if key is not None:
        merged["authorization"] = f"Bearer {key}"
    return merged


def job_body(
    task: str,
    payload: Payload | None,
    *,
    delay_seconds: int | None,
    priority: int | None,
    unique_key: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task, "payload": dict(payload or {})}
    options = {"delay_seconds": delay_seconds, "priority": priority, "unique_key": unique_key}
    body.update({name: value for name, value in options.items() if value is not None})
    return body


def idempotency(key: str | None) -> dict[str, str]:
    return {} if key is None else {"idempotency-key": key}


def answer(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; the refusal as a `ConveyorError` otherwise."""
    if response.is_success:
        return response.json() if response.content else None
    raise refusal(response)


def refusal(response: httpx.Response) -> ConveyorError:
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    return error_for(response.status_code, body, response.headers)


def wait_seconds(remaining: float) -> int:
    """What to ask the API to wait for: whole seconds (the API takes integers), at most its
    maximum; 0 asks for the job as it is now."""
    return int(min(max(remaining, 0.0), MAX_WAIT_SECONDS))


def answered_early(asked: int, took: float) -> bool:
    """Whether to pause before asking again: the answer came before the wait asked for was up
    (an API that holds no waits answers at once), or no wait was asked for."""
    return asked == 0 or took < asked


def next_poll(previous: float) -> float:
    return POLL_FIRST if previous <= 0 else min(previous * 2, POLL_MAX)


def remaining(deadline: float, now: float) -> float:
    return deadline - now if math.isfinite(deadline) else math.inf


def query(**filters: str | None) -> dict[str, str]:
    return {name: value for name, value in filters.items() if value is not None}
