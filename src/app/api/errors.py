"""Domain errors, validation failures and unavailable dependencies mapped to HTTP answers, in one place.

Every answer is JSON: a dependency that is down is a 503 with Retry-After, input the
database refuses is a 422, and anything unforeseen is a 500 that names a request id
(see `failures`), never a plain-text page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.errors import (
    AlreadyInFlight,
    CursorExpired,
    DeliveryNotReplayable,
    Forbidden,
    IdempotencyConflict,
    InvalidSchedule,
    InvalidTransition,
    JobNotFound,
    JobRefused,
    LedgerUnavailable,
    QueueNotFound,
    RateLimited,
    ScheduleNameTaken,
    ScheduleNotFound,
    TooManySchedules,
    Unauthenticated,
    UnknownTask,
    UnstorableInput,
    WebhookNotFound,
    WorkflowEnded,
    WorkflowNotFound,
)
from app.logs import first_line, get_logger

log = get_logger("conveyor.api")

RETRY_AFTER_SECONDS = "1"
LEDGER_UNAVAILABLE = "the job ledger is unavailable; retry later"
# What a database that is away, restarting or overloaded raises, through either driver layer.
UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    # A write that reached a standby (the ledger turns it into an OperationalError and drops
    # the connection; this catches one that comes another way).
    psycopg.errors.ReadOnlySqlTransaction,
    ConnectionError,
    TimeoutError,
)
REFUSED: tuple[type[Exception], ...] = (sqlalchemy.exc.DataError, psycopg.DataError)


def field_errors(errors: Sequence[Any], prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as JSON: where, what, which kind; never the (possibly huge) input."""
    return [
        {
            "loc": [*prefix, *error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in errors
    ]


def unstorable(error: UnstorableInput, prefix: tuple[str | int, ...]) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": (*prefix, *error.loc), "msg": str(error), "type": "string_unstorable"}]
    )


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = [e for e in errors if e.get("type") == "json_invalid"]
    if malformed:
        reason = malformed[0].get("ctx", {}).get("error", "invalid JSON")
        return JSONResponse({"detail": f"malformed JSON: {reason}"}, status_code=400)
    return JSONResponse({"detail": field_errors(errors)}, status_code=422)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _gone(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=410)


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _in_flight(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AlreadyInFlight)
    body = {"detail": str(exc), "job_id": str(exc.job_id), "status_url": f"/api/v1/jobs/{exc.job_id}"}
    return JSONResponse(body, status_code=409)


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    loc = ["body", "task"] if isinstance(exc, UnknownTask) else ["header", "Idempotency-Key"]
    kind = "unknown_task" if isinstance(exc, UnknownTask) else "idempotency_key_reused"
    return JSONResponse({"detail": [{"loc": loc, "msg": str(exc), "type": kind}]}, status_code=422)


async def _invalid_schedule(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidSchedule)
    loc = ["body", exc.field] if exc.field else ["body"]
    return JSONResponse({"detail": [{"loc": loc, "msg": str(exc), "type": "value_error"}]}, status_code=422)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    detail = str(exc) if isinstance(exc, JobRefused) else "the ledger refused a value of this request"
    return JSONResponse({"detail": detail}, status_code=422)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, LedgerUnavailable):
        log.warning("database unavailable", path=request.url.path, error=first_line(exc))
    detail = str(exc) if isinstance(exc, LedgerUnavailable) else LEDGER_UNAVAILABLE
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})


async def _unauthenticated(request: Request, exc: Exception) -> JSONResponse:
    challenge = 'Bearer realm="conveyor"'
    if "authorization" in request.headers:
        challenge += ', error="invalid_token"'
    return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": challenge})


async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=403)


async def _rate_limited(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})


async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnstorableInput)
    detail = [{"loc": ["body", *exc.loc], "msg": str(exc), "type": "string_unstorable"}]
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(UnstorableInput, _unstorable)
    app.add_exception_handler(Unauthenticated, _unauthenticated)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(LedgerUnavailable, _unavailable)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(JobRefused, _refused)
    for kind in REFUSED:
        app.add_exception_handler(kind, _refused)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(ScheduleNotFound, _not_found)
    app.add_exception_handler(WorkflowNotFound, _not_found)
    app.add_exception_handler(QueueNotFound, _not_found)
    app.add_exception_handler(WebhookNotFound, _not_found)
    app.add_exception_handler(DeliveryNotReplayable, _conflict)
    app.add_exception_handler(InvalidTransition, _conflict)
    app.add_exception_handler(WorkflowEnded, _conflict)
    app.add_exception_handler(CursorExpired, _gone)
    app.add_exception_handler(ScheduleNameTaken, _conflict)
    app.add_exception_handler(AlreadyInFlight, _in_flight)
    app.add_exception_handler(TooManySchedules, _conflict)
    app.add_exception_handler(InvalidSchedule, _invalid_schedule)
    app.add_exception_handler(UnknownTask, _unprocessable)
    app.add_exception_handler(IdempotencyConflict, _unprocessable)
