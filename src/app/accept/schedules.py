"""A new schedule: its payload validated like any job's, its timing checked, its first tick set.

The relay inserts the payload a schedule holds as it is (it never sees the task's model),
so a schedule is validated here, once, when it is created: the API and `conveyor schedules
add` both end here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import ScheduleNameTaken, TooManySchedules
from app.jobs.enqueue import new_job
from app.jobs.registry import TaskSpec
from app.jobs.schedules import Timing, check_interval, check_name
from app.ledger import schedules as ledger
from app.ledger.connections import AsyncConnection
from app.ledger.jobs import NewJob
from app.ledger.schedules import NewSchedule
from app.settings import get_settings


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated schedule, still to be stored: its name, the job each tick makes, its timing."""

    name: str
    job: NewJob
    timing: Timing


def draft(name: str, spec: TaskSpec[Any], payload: Any, timing: Timing) -> Draft:
    """Raises pydantic's ValidationError for a payload that does not fit the task, UnstorableInput
    for one the ledger cannot store, InvalidSchedule for a bad name or for ticks closer together
    than MIN_SCHEDULE_INTERVAL_SECONDS."""
    check_interval(timing, get_settings().min_schedule_interval_seconds)
    return Draft(check_name(name), new_job(spec, payload), timing)


async def store(conn: AsyncConnection, schedule: Draft) -> NewSchedule:
    """Insert it in the caller's transaction, due at its first tick after the database's now;
    raises ScheduleNameTaken, or TooManySchedules when MAX_SCHEDULES exist (counted under a
    lock held until the transaction ends, so concurrent creates never pass it)."""
    job, timing = schedule.job, schedule.timing
    new = NewSchedule(
        name=schedule.name,
        task=job.task,
        queue=job.queue,
        payload_json=job.payload_json,
        max_attempts=job.max_attempts,
        cron=timing.cron,
        every_seconds=timing.every_seconds,
        timezone=timing.timezone,
        next_run_at=timing.next_after(await ledger.database_now_async(conn)),
    )
    limit = get_settings().max_schedules
    outcome = await ledger.insert_async(conn, new, limit)
    if outcome == "name taken":
        raise ScheduleNameTaken(schedule.name)
    if outcome == "full":
        raise TooManySchedules(limit)
    return new
