"""When a schedule's ticks fall: a 5-field cron expression in an IANA time zone, or every N seconds.

Written once for the relay (which fires ticks), the API and the CLI (which validate a new
schedule and say when it runs next). Every moment here is timezone-aware; the ledger holds
them in UTC.

- `Every(seconds=N)` ticks on the multiples of N seconds since the Unix epoch, so every
  relay computes the same ticks whenever it starts (every 60 s: on each minute; every
  3600 s: on each hour, in UTC).
- `Cron("0 3 * * *", timezone="Europe/Paris")` ticks as Debian's cron would in that zone
  (cronsim): a wall time that a DST change skips fires right after the change, and one that
  it repeats fires once; wildcard hours fire every real hour.

`plan` decides what a relay fires when a schedule is due: each tick at most
`catch_up_seconds` late, else (after downtime) only the most recent missed one.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

from app.errors import InvalidSchedule

# A year: a longer interval is better said as a cron expression.
MAX_EVERY_SECONDS = 366 * 86_400
CRON_FIELDS = 5
MAX_CRON_LENGTH = 200
# Schedule names are path segments (/api/v1/schedules/{name}) and task names fit them.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
_NAME = re.compile(NAME_PATTERN)
# Bounds the search for ticks: a wall clock never has more in a window than this.
MAX_TICKS_IN_WINDOW = 100_000
# The first look back for the latest missed tick; doubled until one is found.
FIRST_LOOK_BACK = timedelta(minutes=1)
# How many ticks of a cron expression are looked at for the two closest together: enough to
# go round every pattern of a day's minutes and hours that fires a few times a day.
GAP_SAMPLE_TICKS = 200


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    """The name, if it is an IANA time zone; raises InvalidSchedule otherwise."""
    if name not in _zone_names():
        raise InvalidSchedule(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'", "timezone"
        )
    return name


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidSchedule(
            "a schedule name is 1 to 200 letters, digits and . _ : - (starting with a letter or digit)",
            "name",
        )
    return name


def check_cron(expression: str) -> str:
    """The expression, if it is a 5-field cron expression that fires; raises InvalidSchedule."""
    fields = expression.split()
    if len(fields) != CRON_FIELDS or len(expression) > MAX_CRON_LENGTH:
        raise InvalidSchedule(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"got {expression!r}",
            "cron",
        )
    try:
        next(CronSim(expression, datetime.now(UTC)))
    except CronSimError as error:
        raise InvalidSchedule(f"invalid cron expression {expression!r}: {error}", "cron") from None
    except StopIteration:
        raise InvalidSchedule(f"cron expression {expression!r} never fires", "cron") from None
    return expression


def check_every(seconds: int) -> int:
    if isinstance(seconds, bool) or not 1 <= seconds <= MAX_EVERY_SECONDS:
        raise InvalidSchedule(
            f"every_seconds is a whole number from 1 to {MAX_EVERY_SECONDS}", "every_seconds"
        )
    return seconds


def check_interval(timing: Timing, minimum: float, start: datetime | None = None) -> Timing:
    """The timing, if no two of its ticks come closer than `minimum` seconds; raises
    InvalidSchedule naming `every_seconds` or `cron` otherwise. A cron expression is judged by
    its next GAP_SAMPLE_TICKS ticks after `start` (now)."""
    if timing.every_seconds is not None:
        if timing.every_seconds < minimum:
            raise InvalidSchedule(
                f"every_seconds is {timing.every_seconds}: at least {minimum:g} here "
                "(MIN_SCHEDULE_INTERVAL_SECONDS)",
                "every_seconds",
            )
        return timing
    gap = shortest_gap(timing, start or datetime.now(UTC))
    if gap is not None and gap < minimum:
        raise InvalidSchedule(
            f"cron expression {timing.cron!r} fires {gap:g}s apart: at least {minimum:g} here "
            "(MIN_SCHEDULE_INTERVAL_SECONDS)",
            "cron",
        )
    return timing


def shortest_gap(timing: Timing, start: datetime, ticks: int = GAP_SAMPLE_TICKS) -> float | None:
    """The fewest seconds between two consecutive ticks among the next `ticks` after `start`."""
    shortest: float | None = None
    previous = timing.next_after(start)
    for _ in range(ticks - 1):
        tick = timing.next_after(previous)
        gap = (tick - previous).total_seconds()
        shortest = gap if shortest is None else min(shortest, gap)
        previous = tick
    return shortest


class Timing(ABC):
    """When ticks fall."""

    timezone: str

    @abstractmethod
    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment`."""

    def ticks_between(self, low: datetime, high: datetime) -> Iterator[datetime]:
        """The ticks from `low` to `high`, both included, oldest first."""
        tick = self.next_after(low - timedelta(microseconds=1))
        for _ in range(MAX_TICKS_IN_WINDOW):
            if tick > high:
                return
            yield tick
            tick = self.next_after(tick)

    def latest_between(self, low: datetime, high: datetime) -> datetime | None:
        """The most recent tick from `low` to `high` (None if there is none), looking back from
        `high` in doubling steps, so a long downtime costs a few steps, not a walk over every
        tick it missed."""
        look_back = FIRST_LOOK_BACK
        while True:
            start = max(low, high - look_back)
            last = deque(self.ticks_between(start, high), maxlen=1)
            if last or start == low:
                return last[0] if last else None
            look_back *= 2

    @property
    @abstractmethod
    def cron(self) -> str | None: ...

    @property
    @abstractmethod
    def every_seconds(self) -> int | None: ...

    @abstractmethod
    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Every(Timing):
    """Ticks every `seconds` seconds, on the multiples of `seconds` since the Unix epoch."""

    seconds: int
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        check_every(self.seconds)
        check_timezone(self.timezone)

    def next_after(self, moment: datetime) -> datetime:
        steps = math.floor(moment.timestamp() / self.seconds) + 1
        return datetime.fromtimestamp(steps * self.seconds, UTC)

    def latest_between(self, low: datetime, high: datetime) -> datetime | None:
        latest = datetime.fromtimestamp(math.floor(high.timestamp() / self.seconds) * self.seconds, UTC)
        return latest if latest >= low else None

    @property
    def cron(self) -> str | None:
        return None

    @property
    def every_seconds(self) -> int | None:
        return self.seconds

    def describe(self) -> str:
        return f"every {self.seconds}s"


@dataclass(frozen=True, slots=True)
class Cron(Timing):
    """Ticks when the 5-field cron `expression` matches the wall clock of `timezone`."""

    expression: str
    timezone: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_cron(self.expression)
        object.__setattr__(self, "_zone", ZoneInfo(check_timezone(self.timezone)))

    def next_after(self, moment: datetime) -> datetime:
        # cronsim reads wall clocks: an answer that a repeated hour puts before `moment` is passed by.
        for tick in CronSim(self.expression, moment.astimezone(self._zone)):
            found = tick.astimezone(UTC)
            if found > moment:
                return found
        raise InvalidSchedule(f"cron expression {self.expression!r} does not fire again")

    @property
    def cron(self) -> str | None:
        return self.expression

    @property
    def every_seconds(self) -> int | None:
        return None

    def describe(self) -> str:
        return f"cron {self.expression!r}" + ("" if self.timezone == "UTC" else f" ({self.timezone})")


def timing(cron: str | None, every_seconds: int | None, timezone: str = "UTC") -> Timing:
    """The timing of exactly one of `cron` and `every_seconds`; raises InvalidSchedule."""
    if (cron is None) == (every_seconds is None):
        raise InvalidSchedule("give exactly one of cron and every_seconds")
    if cron is not None:
        return Cron(cron, timezone)
    assert every_seconds is not None
    return Every(every_seconds, timezone)


def declared(schedule: Timing | str) -> Timing:
    """What `@task(schedule=...)` takes: a Timing, or a cron expression in UTC."""
    return Cron(schedule) if isinstance(schedule, str) else schedule


@dataclass(frozen=True, slots=True)
class Plan:
    """What to fire for a due schedule, oldest first, and when it is due next."""

    fire: list[datetime]
    next_run_at: datetime


def plan(when: Timing, next_run_at: datetime, now: datetime, catch_up_seconds: float) -> Plan:
    """The ticks a relay fires at `now` for a schedule due at `next_run_at`.

    Ticks at most `catch_up_seconds` late all fire (a relay killed mid-tick, a short outage:
    late, never lost); when the schedule is further behind than that, only the most recent
    missed tick fires (after downtime: no storm). The next run is the first tick after `now`.
    """
    if next_run_at > now:
        return Plan([], next_run_at)
    recent = list(when.ticks_between(max(next_run_at, now - timedelta(seconds=catch_up_seconds)), now))
    if not recent:
        latest = when.latest_between(next_run_at, now)
        recent = [] if latest is None else [latest]
    return Plan(recent, when.next_after(now))
