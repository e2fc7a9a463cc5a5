"""The refusals: one exception per kind of answer the API gives instead of doing what was asked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConveyorError(Exception):
    """Raised when a request fails: the API refused it (`.status` is the HTTP status, `.detail`
    the API's `detail`: a message, or a list of field errors for a 422), or no answer came
    (`NetworkError`, status 0)."""

    def __init__(self, status: int, detail: Any, body: Any = None, headers: Mapping[str, str] | None = None):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body
        self.headers: Mapping[str, str] = headers or {}


class NetworkError(ConveyorError):
    """Raised when no answer came: the API could not be reached, the connection broke, or the
    answer took longer than the timeout (`.timed_out`). `.status` is 0, `.detail` says what
    failed, and the httpx error it stands for is its `__cause__`."""

    def __init__(self, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(0, detail)
        self.timed_out = timed_out


class BadRequest(ConveyorError):
    """Raised when the body is not JSON, is malformed, or is too large (400, 413, 415)."""


class AuthError(ConveyorError):
    """Raised when the key is missing, unknown or revoked (401) or lacks the scope (403)."""


class NotFound(ConveyorError):
    """Raised when no such job (or other thing) is there, or the key may not see it (404)."""


class Conflict(ConveyorError):
    """Raised when the job's state forbids the action: replaying a job that is not dead, cancelling
    a finished one, a job of a one-at-a-time task in flight (409; `.job_id` names that job)."""

    @property
    def job_id(self) -> str | None:
        return self.body.get("job_id") if isinstance(self.body, dict) else None


class Gone(ConveyorError):
    """Raised when an event stream is resumed from an event older than the API keeps (410)."""


class ValidationFailed(ConveyorError):
    """Raised when the task is unknown or the payload or an option is invalid (422)."""


class RateLimited(ConveyorError):
    """Raised when the key's request rate is used up (429); `.retry_after` says for how long."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


class ServerError(ConveyorError):
    """Raised when the API failed (5xx)."""


class Unavailable(ServerError):
    """Raised when the API cannot reach its ledger (503); `.retry_after` says when to retry."""

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)


KINDS: dict[int, type[ConveyorError]] = {
    400: BadRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: BadRequest,
    415: BadRequest,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(float(headers["retry-after"]), 0.0)
    except (KeyError, ValueError):
        return None


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> ConveyorError:
    """The exception for a refused request, from its status, its JSON body (or text) and headers."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    kind = KINDS.get(status, ServerError if status >= 500 else ConveyorError)
    return kind(status, detail, body, headers)
