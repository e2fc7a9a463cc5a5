"""How many jobs a worker process claims: one per thread, and ahead only at the pace its threads go."""

from __future__ import annotations

import pytest

from app.execution import consumer
from app.execution.consumer import Slots


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(consumer.time, "monotonic", lambda: now[0])
    return now


def test_a_worker_claims_one_job_per_thread_before_it_knows_its_pace(clock: list[float]) -> None:
    slots = Slots()
    slots.configure(threads=4, ahead=12)
    assert slots.take(100) == 4
    assert slots.take(1) == 0


def test_short_jobs_let_it_claim_ahead_up_to_the_limit(clock: list[float]) -> None:
    slots = Slots()
    slots.configure(threads=4, ahead=12)
    for _ in range(10):  # a second in which every claimed job is done within a tenth
        slots.give_back(slots.take(100))
        clock[0] += 0.1
    assert slots.take(100) == 16, "four threads, and the twelve ahead start in well under a second"


def test_long_jobs_leave_nothing_claimed_ahead(clock: list[float]) -> None:
    slots = Slots()
    slots.configure(threads=4, ahead=12)
    assert slots.take(4) == 4
    for _ in range(8):  # four threads running 10 s tasks: one finishes every 2.5 s
        clock[0] += 2.5
        slots.give_back(1)
        assert slots.take(100) == 1, "only for the thread that freed: a job claimed ahead would wait"
    assert slots.take(100) == 0


def test_ahead_is_what_the_threads_start_within_a_second_at_their_pace(clock: list[float]) -> None:
    slots = Slots()
    slots.configure(threads=4, ahead=12)
    assert slots.take(4) == 4
    for _ in range(4):  # three jobs finish every second
        clock[0] += 1.0
        slots.give_back(3)
        slots.take(3)
    assert slots.take(100) == 3, "three ahead: about a second's worth"


def test_a_waiting_consumer_is_woken_once_when_a_slot_frees() -> None:
    slots = Slots()
    slots.configure(threads=1, ahead=0)
    woken: list[str] = []
    assert slots.take(1) == 1
    assert slots.wait(1, lambda: woken.append("consumer")) is False
    slots.give_back(1)
    slots.give_back(0)
    assert woken == ["consumer"]
    assert slots.wait(1, lambda: woken.append("again")) is True


def test_a_closed_worker_claims_nothing_more() -> None:
    slots = Slots()
    slots.configure(threads=8, ahead=0)
    slots.close()
    assert slots.take(8) == 0
    slots.give_back(1)
    assert slots.take(8) == 0
