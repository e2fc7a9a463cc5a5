"""What the blocking and the asyncio clients share: the requests (`Call`), the answers and
errors, and the waiting policy. Each client only sends a `Call` its own way (`_send`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from conveyor_client._errors import ConveyorError, NetworkError, error_for
from conveyor_client._workflows import Step

Payload = Mapping[str, Any]
JOBS = "/api/v1/jobs"
EVENTS = "/api/v1/events"
WORKFLOWS = "/api/v1/workflows"
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
# What the API adds to a POST's answer when an Idempotency-Key it knew made it answer as it
# answered the key's first request (same ids, nothing new stored).
REPLAYED_HEADER = "idempotent-replayed"


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


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as both clients send it: `httpx.Client.request(method, path, **options())`."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    timeout: float | httpx.Timeout | None = None  # None: the client's own

    def options(self) -> dict[str, Any]:
        given = {"json": self.json, "params": self.params, "headers": self.headers, "timeout": self.timeout}
        return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The options of an enqueue besides the task and payload."""

    delay_seconds: int | None
    priority: int | None
    idempotency_key: str | None
    unique_key: str | None

    def body(self, task: str, payload: Payload | None) -> dict[str, Any]:
        return job_body(
            task,
            payload,
            delay_seconds=self.delay_seconds,
            priority=self.priority,
            unique_key=self.unique_key,
        )


def enqueue_call(task: str, payload: Payload | None, options: JobOptions) -> Call:
    """`POST /api/v1/jobs`: one job."""
    headers = idempotency(options.idempotency_key)
    return Call("POST", JOBS, json=options.body(task, payload), headers=headers)


def enqueue_many_call(task: str, payloads: Sequence[Payload], options: JobOptions) -> Call:
    """`POST /api/v1/jobs/batch`: a job per payload, all or none."""
    jobs = [options.body(task, payload) for payload in payloads]
    return Call("POST", f"{JOBS}/batch", json={"jobs": jobs}, headers=idempotency(options.idempotency_key))


def view_call(job_id: str, wait_seconds: int | None, timeout: float) -> Call:
    """`GET /api/v1/jobs/{id}`, with a wait when `wait_seconds` is given (the request's timeout
    then gets the wait on top)."""
    if wait_seconds is None:
        return Call("GET", f"{JOBS}/{job_id}")
    return Call(
        "GET", f"{JOBS}/{job_id}", params={"wait_seconds": wait_seconds}, timeout=timeout + wait_seconds
    )


def action_call(job_id: str, action: str) -> Call:
    """`POST /api/v1/jobs/{id}/{action}` (`cancel`, `replay`)."""
    return Call("POST", f"{JOBS}/{job_id}/{action}")


def enqueue_workflow_call(
    name: str, steps: Mapping[str, Step | Mapping[str, Any]], idempotency_key: str | None
) -> Call:
    """`POST /api/v1/workflows`: a workflow and all its steps, or nothing. A step is a `Step` or
    its JSON body as the API takes it (`{"task", "payload", "after"?, "priority"?}`)."""
    body = {
        "name": name,
        "steps": {
            step: spec.body() if isinstance(spec, Step) else dict(spec) for step, spec in steps.items()
        },
    }
    return Call("POST", WORKFLOWS, json=body, headers=idempotency(idempotency_key))


def workflow_call(workflow_id: str) -> Call:
    """`GET /api/v1/workflows/{id}`."""
    return Call("GET", f"{WORKFLOWS}/{workflow_id}")


def cancel_workflow_call(workflow_id: str) -> Call:
    """`POST /api/v1/workflows/{id}/cancel`."""
    return Call("POST", f"{WORKFLOWS}/{workflow_id}/cancel")


def events_call(filters: Mapping[str, str | None], timeout: float, idle_timeout: float) -> Call:
    """`GET /api/v1/events` (its `Last-Event-ID` is the resumption's, per connection)."""
    return Call("GET", EVENTS, params=query(**filters), timeout=httpx.Timeout(timeout, read=idle_timeout))


def network_error(error: httpx.RequestError) -> NetworkError:
    """The client's error for a request that got no answer (or an unreadable one)."""
    timed_out = isinstance(error, httpx.TimeoutException)
    try:
        where = f" from {error.request.method} {error.request.url}"
    except RuntimeError:  # an error raised before its request was made
        where = ""
    failure = NetworkError(
        f"no answer{' in time' if timed_out else ''}{where}: {error!r}", timed_out=timed_out
    )
    failure.__cause__ = error
    return failure


def stream_failure(error: Exception) -> tuple[ConveyorError, float | None]:
    """Why an event stream's connection ended, if another is worth making (and how soon at the
    earliest, when the API said); the error raised again otherwise."""
    if isinstance(error, httpx.RequestError):
        return network_error(error), None
    if isinstance(error, ConveyorError) and error.status in RETRYABLE:
        return error, getattr(error, "retry_after", None)
    raise error


def answer(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; the refusal as a `ConveyorError` otherwise."""
    if response.is_success:
        return response.json() if response.content else None
    raise refusal(response)


def replayed(response: httpx.Response) -> bool:
    """Whether an enqueue's answer is the replay of an earlier one with the same Idempotency-Key."""
    said: str = response.headers.get(REPLAYED_HEADER, "")
    return said.strip().lower() == "true"


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
