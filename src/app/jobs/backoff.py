"""Retry delays: exponential, capped, jittered."""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The delay before the attempt after `attempt` (1-based).

    Equal jitter: half of the exponential step is fixed, half is random. Retries of many
    jobs that failed together spread out, yet each job's delays still grow from one
    attempt to the next until the cap (full jitter would allow a later delay shorter
    than an earlier one).
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    step = min(cap, base * 2 ** (attempt - 1))
    half = step / 2
    jitter: float = (rng or random).uniform(0.0, half)
    return float(half + jitter)
