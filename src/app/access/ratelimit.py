"""Per-client request rates (RATE_LIMIT, e.g. "1000/second"), counted in each API process.

`limits`' fixed window counts requests per key and window in memory; a request past the
limit is refused with 429 and the seconds until the window resets.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from app.errors import RateLimited


class RateLimiter:
    def __init__(self, spec: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._limiter = FixedWindowRateLimiter(MemoryStorage())

    def hit(self, client_key: str) -> None:
        """Count one request of this client; raises RateLimited past any of the limits."""
        for item in self.items:
            if not self._limiter.hit(item, client_key):
                reset_at, _ = self._limiter.get_window_stats(item, client_key)
                raise RateLimited(max(1, math.ceil(reset_at - time.time())))
