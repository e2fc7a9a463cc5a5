"""The error answers each route documents in the OpenAPI schema (every status it can return)."""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorBody, InFlightBody

Responses = dict[int | str, dict[str, Any]]

UNAVAILABLE: Responses = {
    503: {
        "model": ErrorBody,
        "description": "The ledger (PostgreSQL) is unavailable; retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
    },
}
INVALID: Responses = {422: {"model": ErrorBody, "description": "A parameter is invalid"}}
AUTH: Responses = {
    401: {
        "model": ErrorBody,
        "description": "No key, or an unknown, revoked or malformed one",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    },
    403: {"model": ErrorBody, "description": "The key lacks the scope this route needs"},
    429: {
        "model": ErrorBody,
        "description": "This key's request rate is used up (RATE_LIMIT)",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
    },
}
IN_FLIGHT: Responses = {
    409: {
        "model": InFlightBody,
        "description": "A job of this task is already queued or running for this client "
        "(export_jobs: one at a time per key); `job_id` names it",
    }
}
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No such job"}}
NO_SCHEDULE: Responses = {404: {"model": ErrorBody, "description": "No such schedule"}}
NO_QUEUE: Responses = {404: {"model": ErrorBody, "description": "No such queue"}}
SCHEDULE_CONFLICT: Responses = {
    409: {
        "model": ErrorBody,
        "description": "A schedule of that name exists, or MAX_SCHEDULES schedules exist already",
    }
}
SCHEDULE_BODY: Responses = {
    400: {"model": ErrorBody, "description": "Malformed JSON"},
    413: {"model": ErrorBody, "description": "Body larger than MAX_BODY_BYTES (also when chunked)"},
    415: {"model": ErrorBody, "description": "Body is not JSON"},
    422: {
        "model": ErrorBody,
        "description": "Invalid schedule: a bad cron expression, both or neither of cron and "
        "every_seconds, ticks closer together than MIN_SCHEDULE_INTERVAL_SECONDS (every_seconds "
        "below it, or a cron expression some of whose ticks are), an unknown time zone or task, "
        "or an invalid payload",
    },
}
BODY: Responses = {
    400: {"model": ErrorBody, "description": "Malformed JSON"},
    413: {"model": ErrorBody, "description": "Body larger than MAX_BODY_BYTES (also when chunked)"},
    415: {"model": ErrorBody, "description": "Body is not JSON"},
    422: {
        "model": ErrorBody,
        "description": "Unknown task, invalid payload (strict JSON types; no NUL in strings), "
        "or an Idempotency-Key reused for another job",
    },
}


def responses(*parts: Responses) -> Responses:
    merged: Responses = {}
    for part in parts:
        merged.update(part)
    return merged
