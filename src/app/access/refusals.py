"""Refusals cost little: requests without a valid key, and failed sign-ins, have a budget per
client address and one for everyone (REFUSAL_LIMIT_PER_ADDRESS, REFUSAL_LIMIT_GLOBAL), counted
in each API process with `limits`' fixed windows as the per-key rate is (see ratelimit).

A key that is not remembered is looked up only while its address (and everyone) is within the
budget (`lookup`); each refusal is counted (`refuse`), and past the budget the answer is 429
with Retry-After. A valid key remembered by the Verifier never gets here: what it costs a
client with a good key is nothing.

Each counted refusal is logged with its address and reason (the budget bounds those lines);
a throttled address is logged once per window, so a flood cannot flood the log either.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

from app.errors import RateLimited
from app.logs import get_logger

log = get_logger("conveyor.access")

EVERYONE = "*"
THROTTLED = "too many refused requests from this address"
THROTTLED_EVERYONE = "too many refused requests; this server is refusing unknown keys for now"
# At most this many throttled addresses are remembered as logged.
TOLD_MEMORY_SIZE = 10_000


def _items(spec: str) -> list[RateLimitItem]:
    return parse_many(spec) if spec.strip() else []


class Refusals:
    """The refusal budget of one API process."""

    def __init__(self, per_address: str, overall: str) -> None:
        self._budgets = ((False, _items(per_address)), (True, _items(overall)))
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._told: dict[str, float] = {}  # counter -> end of the window whose throttling was logged
        self._looking: dict[str, int] = {}  # counter -> lookups under way

    @asynccontextmanager
    async def lookup(self, address: str) -> AsyncIterator[None]:
        """Around a lookup of a key or session that is not remembered: raises RateLimited when
        this address, or everyone, has used up its refusals. Lookups under way count as spent
        until they end, so a burst of concurrent made-up keys cannot all slip in before the
        first of them is refused."""
        await self.admit(address)
        counters = (address, EVERYONE)
        for counter in counters:
            self._looking[counter] = self._looking.get(counter, 0) + 1
        try:
            yield
        finally:
            for counter in counters:
                left = self._looking[counter] - 1
                if left:
                    self._looking[counter] = left
                else:
                    del self._looking[counter]

    async def admit(self, address: str) -> None:
        """Raises RateLimited when this address, or everyone, has used up its refusals (counting
        the lookups under way as spent)."""
        for everyone, items in self._budgets:
            counter = EVERYONE if everyone else address
            for item in items:
                _, remaining = await self._limiter.get_window_stats(item, counter)
                if remaining <= self._looking.get(counter, 0):
                    raise await self._throttled(item, counter, address)

    async def refuse(self, address: str, reason: str) -> None:
        """Count one refusal of `address`; raises RateLimited when it is past the budget."""
        for everyone, items in self._budgets:
            counter = EVERYONE if everyone else address
            for item in items:
                if not await self._limiter.hit(item, counter):
                    raise await self._throttled(item, counter, address)
        log.info("refused", address=address, reason=reason)

    async def _throttled(self, item: RateLimitItem, counter: str, address: str) -> RateLimited:
        reset_at, _ = await self._limiter.get_window_stats(item, counter)
        now = time.time()
        if self._told.get(counter, 0.0) < reset_at:
            if len(self._told) >= TOLD_MEMORY_SIZE:
                kept = {k: v for k, v in self._told.items() if v > now}
                # Still full (a flood from many addresses): forget the older half.
                self._told = (
                    kept if len(kept) < TOLD_MEMORY_SIZE else dict(list(kept.items())[len(kept) // 2 :])
                )
            self._told[counter] = reset_at
            log.warning(
                "refusals throttled",
                address=counter if counter == EVERYONE else address,
                limit=str(item),
                until=round(reset_at),
            )
        what = THROTTLED_EVERYONE if counter == EVERYONE else THROTTLED
        return RateLimited(max(1, math.ceil(reset_at - now)), what)
