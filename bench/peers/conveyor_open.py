"""Conveyor's API with its key check taken out: the peer that says what access costs.

The same app as `conveyor api` (the same ledger writes, group commit and relay), except that
the accept route's `authenticate` hands back an all-scopes client without reading a header,
a cache or a rate. Measured beside `conveyor api` with a key, the difference is what access
control costs the hot path. A benchmark peer only: never a way to run Conveyor.
"""

from __future__ import annotations

from typing import Any

from app.access.keys import Client, Scope
from app.api import accept as accept_route
from app.asgi import create_app

ANYONE = Client(key_id="bench-open", name="bench-open", scopes=frozenset(Scope))


async def _anyone(request: Any, *scopes: Scope) -> Client:
    return ANYONE


accept_route.authenticate = _anyone  # type: ignore[assignment]
app = create_app()
