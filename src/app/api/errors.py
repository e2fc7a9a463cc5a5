"""Domain errors and validation failures mapped to HTTP answers, in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.errors import IdempotencyConflict, InvalidTransition, JobNotFound, LedgerUnavailable, UnknownTask


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


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    loc = ["body", "task"] if isinstance(exc, UnknownTask) else ["header", "Idempotency-Key"]
    kind = "unknown_task" if isinstance(exc, UnknownTask) else "idempotency_key_reused"
    return JSONResponse({"detail": [{"loc": loc, "msg": str(exc), "type": kind}]}, status_code=422)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(LedgerUnavailable, _unavailable)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(InvalidTransition, _conflict)
    app.add_exception_handler(UnknownTask, _unprocessable)
    app.add_exception_handler(IdempotencyConflict, _unprocessable)
