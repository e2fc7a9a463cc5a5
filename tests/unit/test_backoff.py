"""Retry delays: exponential, capped, jittered, and growing from one attempt to the next."""

from __future__ import annotations

import random

import pytest

from app.jobs.backoff import backoff_seconds


def test_each_delay_lies_between_half_and_all_of_its_exponential_step() -> None:
    rng = random.Random(7)
    for attempt in range(1, 8):
        step = 1.0 * 2 ** (attempt - 1)
        for _ in range(200):
            delay = backoff_seconds(attempt, base=1.0, cap=1000.0, rng=rng)
            assert step / 2 <= delay <= step


def test_delays_never_shrink_from_one_attempt_to_the_next_until_the_cap() -> None:
    rng = random.Random(11)
    for _ in range(500):
        delays = [backoff_seconds(n, base=0.1, cap=100.0, rng=rng) for n in range(1, 8)]
        assert delays == sorted(delays)


def test_the_cap_bounds_every_delay() -> None:
    rng = random.Random(3)
    assert max(backoff_seconds(30, base=1.0, cap=300.0, rng=rng) for _ in range(500)) <= 300.0


def test_jitter_spreads_jobs_that_failed_together() -> None:
    rng = random.Random(5)
    delays = {round(backoff_seconds(4, base=1.0, cap=300.0, rng=rng), 6) for _ in range(100)}
    assert len(delays) > 90


def test_attempts_are_counted_from_one() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_seconds(0, base=1.0, cap=10.0)
