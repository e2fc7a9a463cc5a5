"""Conveyor's HTTP API from Python: enqueue jobs and workflows, wait for them, follow their events,
steer them.

`Client` for blocking code, `AsyncClient` for asyncio; clients/python/README.md shows both.
"""

from conveyor_client._async import AsyncClient, AsyncJob, AsyncWorkflow
from conveyor_client._client import Client, Job, Workflow
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
from conveyor_client._workflows import WORKFLOW_TERMINAL_STATES, Step, WorkflowStep

__version__ = "0.1.0"
__all__ = [
    "OLDEST",
    "TERMINAL_STATES",
    "WORKFLOW_TERMINAL_STATES",
    "AsyncClient",
    "AsyncJob",
    "AsyncWorkflow",
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
    "Step",
    "Unavailable",
    "ValidationFailed",
    "Workflow",
    "WorkflowStep",
]
