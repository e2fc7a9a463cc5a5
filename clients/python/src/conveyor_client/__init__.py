"""Conveyor's HTTP API from Python: enqueue jobs, wait for them, follow their events, steer them.

`Client` for blocking code, `AsyncClient` for asyncio; clients/python/README.md shows both.
"""

from conveyor_client._async import AsyncClient, AsyncJob
from conveyor_client._client import Client, Job
from conveyor_client._errors import (
    AuthError,
    BadRequest,
    Conflict,
    ConveyorError,
    Gone,
    NetworkError,
    NotFound,
    RateLimited,
    ServerError,
    Unavailable,
    ValidationFailed,
)
from conveyor_client._models import TERMINAL_STATES, Event
from conveyor_client._sse import OLDEST

__version__ = "0.1.0"
__all__ = [
    "OLDEST",
    "TERMINAL_STATES",
    "AsyncClient",
    "AsyncJob",
    "AuthError",
    "BadRequest",
    "Client",
    "Conflict",
    "ConveyorError",
    "Event",
    "Gone",
    "Job",
    "NetworkError",
    "NotFound",
    "RateLimited",
    "ServerError",
    "Unavailable",
    "ValidationFailed",
]
