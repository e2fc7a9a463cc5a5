"""When ticks fall, and what a relay fires when a schedule is due (app.jobs.schedules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import InvalidSchedule
from app.jobs.schedules import Cron, Every, check_interval, check_name, plan, shortest_gap, timing

PARIS = "Europe/Paris"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def ticks(when: Cron | Every, start: datetime, count: int) -> list[datetime]:
    found, moment = [], start
    for _ in range(count):
        moment = when.next_after(moment)
        found.append(moment)
    return found


def test_every_n_seconds_ticks_on_the_multiples_of_n_since_the_epoch() -> None:
    every = Every(seconds=60)
    assert every.next_after(utc(2026, 5, 1, 12, 0, 30)) == utc(2026, 5, 1, 12, 1)
    assert every.next_after(utc(2026, 5, 1, 12, 1)) == utc(2026, 5, 1, 12, 2), "strictly after"
    assert ticks(Every(seconds=1), utc(2026, 5, 1, 0, 0, 0, 500_000), 2) == [
        utc(2026, 5, 1, 0, 0, 1),
        utc(2026, 5, 1, 0, 0, 2),
    ]


def test_a_cron_expression_ticks_on_the_wall_clock_of_its_time_zone() -> None:
    nightly = Cron("0 3 * * *", timezone=PARIS)
    assert nightly.next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 2), "03:00 CET is 02:00 UTC"
    assert nightly.next_after(utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 1), "03:00 CEST is 01:00 UTC"


def test_a_wall_time_that_spring_forward_skips_fires_right_after_the_change() -> None:
    # 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 never happens.
    half_past_two = Cron("30 2 * * *", timezone=PARIS)
    assert ticks(half_past_two, utc(2026, 3, 28, 12), 2) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]


def test_a_wall_time_that_fall_back_repeats_fires_once() -> None:
    # 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    half_past_two = Cron("30 2 * * *", timezone=PARIS)
    assert ticks(half_past_two, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]
    # Asked from inside the repeated hour, the next one is the next day's, never an earlier one.
    assert half_past_two.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


def test_an_hourly_cron_fires_every_real_hour_across_both_changes() -> None:
    hourly = Cron("0 * * * *", timezone=PARIS)
    fall = ticks(hourly, utc(2026, 10, 24, 23, 30), 4)
    assert fall == [utc(2026, 10, 25, h) for h in range(0, 4)], "the repeated hour fires twice"
    spring = ticks(hourly, utc(2026, 3, 28, 23, 30), 3)
    assert spring == [utc(2026, 3, 29, h) for h in range(0, 3)]


@pytest.mark.parametrize(
    ("cron", "every", "zone"),
    [
        ("61 * * * *", None, "UTC"),
        ("* * * *", None, "UTC"),
        ("0 0 * * * *", None, "UTC"),
        ("@daily", None, "UTC"),
        ("0 0 30 2 *", None, "UTC"),
        (None, 0, "UTC"),
        (None, None, "UTC"),
        ("* * * * *", 60, "UTC"),
        ("* * * * *", None, "Mars/Olympus"),
        ("* * * * *", None, "../etc/passwd"),
    ],
)
def test_an_invalid_timing_is_refused(cron: str | None, every: int | None, zone: str) -> None:
    with pytest.raises(InvalidSchedule):
        timing(cron, every, zone)


def test_a_schedule_name_is_a_path_segment() -> None:
    assert check_name("app.tasks.example.echo") == "app.tasks.example.echo"
    for bad in ("", "a/b", "-leading", "x" * 201, "nul\x00"):
        with pytest.raises(InvalidSchedule):
            check_name(bad)


def test_a_schedule_not_yet_due_fires_nothing() -> None:
    due = utc(2026, 5, 1, 12, 0, 10)
    assert plan(Every(seconds=1), due, due - timedelta(seconds=1), 5.0).fire == []


def test_ticks_a_few_seconds_late_all_fire_oldest_first() -> None:
    every = Every(seconds=1)
    done = plan(every, utc(2026, 5, 1, 12, 0, 10), utc(2026, 5, 1, 12, 0, 12, 300_000), 5.0)
    assert done.fire == [utc(2026, 5, 1, 12, 0, s) for s in (10, 11, 12)]
    assert done.next_run_at == utc(2026, 5, 1, 12, 0, 13)


def test_after_downtime_only_the_most_recent_missed_tick_fires() -> None:
    every = Every(seconds=60)
    done = plan(every, utc(2026, 5, 1, 12, 0), utc(2026, 5, 1, 18, 30, 20), 5.0)
    assert done.fire == [utc(2026, 5, 1, 18, 30)]
    assert done.next_run_at == utc(2026, 5, 1, 18, 31)


def test_after_a_month_of_downtime_a_cron_schedule_fires_its_latest_tick_once() -> None:
    minutely = Cron("*/5 * * * *", timezone=PARIS)
    done = plan(minutely, utc(2026, 4, 1, 0, 0), utc(2026, 5, 1, 12, 7, 30), 5.0)
    assert done.fire == [utc(2026, 5, 1, 12, 5)]
    assert done.next_run_at == utc(2026, 5, 1, 12, 10)
    daily = Cron("0 3 * * *")
    assert plan(daily, utc(2026, 4, 1, 3), utc(2026, 4, 20, 5), 5.0).fire == [utc(2026, 4, 20, 3)]


def test_the_shortest_gap_of_a_cron_expression_is_found_among_its_next_ticks() -> None:
    start = utc(2026, 5, 1, 12, 0)
    assert shortest_gap(Cron("*/5 * * * *"), start) == 300
    assert shortest_gap(Cron("0,1 3 * * *"), start) == 60, "twice a day, a minute apart"
    assert shortest_gap(Cron("0,59 0,23 * * *"), start) == 60, "23:59, then 00:00 the next day"
    assert shortest_gap(Cron("0 4 * * 1"), start) == 7 * 86_400
    assert shortest_gap(Cron("0 4 * * 1", timezone=PARIS), start) == 7 * 86_400 - 3600, (
        "the week of a DST change"
    )


def test_a_timing_closer_than_the_minimum_is_refused_naming_its_field() -> None:
    start = utc(2026, 5, 1, 12, 0)
    with pytest.raises(InvalidSchedule, match="MIN_SCHEDULE_INTERVAL_SECONDS") as every:
        check_interval(Every(seconds=59), 60, start)
    assert every.value.field == "every_seconds"
    with pytest.raises(InvalidSchedule, match="fires 60s apart") as cron:
        check_interval(Cron("0,1 3 * * *"), 61, start)
    assert cron.value.field == "cron"
    assert check_interval(Every(seconds=60), 60, start) == Every(seconds=60)
    assert check_interval(Cron("* * * * *"), 60, start) == Cron("* * * * *")
