"""Per-client request rates (RATE_LIMIT, e.g. "1000/second"), counted in each API process.

`limits`' fixed window counts requests per key and window in memory; a request past the
limit is refused with 429 and the seconds until the window resets.

Its asyncio storage is used: the thread-based one starts a `threading.Timer` to expire
counters about every 10 ms under load (a thread's start each time; measured in
docs/benchmarks.md), where this one schedules a task on the event loop the API already runs.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

from app.errors import RateLimited


class RateLimiter:
    def __init__(self, spec: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._limiter = FixedWindowRateLimiter(MemoryStorage())

    async def hit(self, client_key: str) -> None:
        """Count one request of this client; raises RateLimited past any of the limits."""
        for item in self.items:
            if not await self._limiter.hit(item, client_key):
                reset_at, _ = await self._limiter.get_window_stats(item, client_key)
                raise RateLimited(max(1, math.ceil(reset_at - time.time())))
