"""Firing schedules: each tick makes exactly one job, whichever relays run or die.

A relay takes the due schedules FOR UPDATE SKIP LOCKED and, in the same transaction,
inserts the job of each tick (schedule, scheduled_for) and moves the schedule to its next
tick. The job of a tick is a unique row: if two relays ever fire one tick, one insert wins
and the other inserts nothing. A relay killed mid-tick rolls back: the schedule stays due
and the next relay to look fires the tick, late but not lost. Ticks at most
SCHEDULE_CATCH_UP_SECONDS late all fire; after longer downtime only the most recent missed
one does. Time is the database's clock, so relays on machines whose clocks disagree agree.

When a relay starts, it writes the schedules that tasks declare in code (`@task(schedule=...)`),
but none that ticks more often than MIN_SCHEDULE_INTERVAL_SECONDS.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from app.errors import InvalidSchedule
from app.jobs import schedules
from app.jobs.flow import flow_of
from app.jobs.registry import TaskSpec, get_task, scheduled_tasks
from app.ledger import jobs as ledger
from app.ledger import schedules as ledger_schedules
from app.ledger.engines import sync_engine
from app.ledger.jobs import NewJob
from app.ledger.limits import Flow
from app.ledger.schedules import Advance, DueSchedule, NewSchedule
from app.logs import Outage, get_logger
from app.relay import metrics
from app.settings import Settings
from app.tracing import tick_context

log = get_logger("conveyor.relay")

# Schedules taken per transaction; more due ones are taken in the next round at once.
TAKE_LIMIT = 100
# Never look again sooner than this: a due schedule another relay holds is its to fire.
MIN_WAIT_SECONDS = 0.02
# A schedule whose stored timing this version cannot read is looked at again this much later.
UNREADABLE_RETRY = timedelta(hours=1)
# While the database is away, tried again this often (doubling): a tick is late by at most that.
MIN_PAUSE_SECONDS = 0.1
MAX_PAUSE_SECONDS = 1.0


class Ticker:
    """Fires the due ticks of every schedule; one per relay, in a thread of its own so that
    neither a broker outage nor a publishing backlog makes a tick late."""

    def __init__(self, settings: Settings, outage: Outage | None = None) -> None:
        self.settings = settings
        self.declared = False
        self.fired = 0
        self._next_at = 0.0  # monotonic: when a schedule is due next, as far as this relay knows
        self._outage = outage or Outage(log, "database (schedules)")
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="conveyor-ticker", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        """Declare, then fire each tick as it comes, until `stop` is set; outages are waited out."""
        pause = MIN_PAUSE_SECONDS
        while not stop.is_set():
            try:
                if not self.declared:
                    self.declare()
                self.fire_due()
            except (OperationalError, psycopg.OperationalError) as error:
                self._outage.failed(error)
                stop.wait(pause)
                pause = min(pause * 2, MAX_PAUSE_SECONDS)
                continue
            except Exception:  # a thread of its own: nobody else would see the error
                log.exception("firing schedules failed; trying again")
                stop.wait(MAX_PAUSE_SECONDS)
                continue
            self._outage.recovered()
            pause = MIN_PAUSE_SECONDS
            stop.wait(self.seconds_to_next())

    def declare(self) -> list[str]:
        """Write the schedules tasks declare in code; the names added or changed.

        They are written whatever MAX_SCHEDULES says (the code, not a client, decides how many
        there are) and count towards it; one that ticks more often than
        MIN_SCHEDULE_INTERVAL_SECONDS is left out, with an error in the log.
        """
        with sync_engine().begin() as conn:
            now = ledger_schedules.database_now(conn)
            changed = ledger_schedules.upsert_declared(
                conn, [declaration(spec, now) for spec in self._within_the_minimum(scheduled_tasks(), now)]
            )
        self.declared = True
        self._next_at = 0.0
        if changed:
            log.info("schedules declared in code written", schedules=changed)
        return changed

    def fire_due(self) -> int:
        """Fire what is due, if anything can be; the number of jobs made."""
        if time.monotonic() < self._next_at:
            return 0
        with sync_engine().begin() as conn:
            due = ledger_schedules.take_due(conn, TAKE_LIMIT)
            jobs, advances = self._plan(due)
            made = ledger.insert(conn, jobs, notify=True)  # the publishing loop wakes at the commit
            ledger_schedules.advance(conn, advances)
            wait = ledger_schedules.seconds_until_next_tick(conn)
        more = len(due) == TAKE_LIMIT
        self._next_at = time.monotonic() + (0.0 if more else self._bounded(wait))
        for job in jobs:
            if job.id in made:
                log.info(
                    "schedule fired",
                    schedule=job.schedule,
                    scheduled_for=job.scheduled_for.isoformat() if job.scheduled_for else None,
                    job_id=str(job.id),
                    task=job.task,
                )
        metrics.SCHEDULED_JOBS.inc(len(made))
        self.fired += len(made)
        return len(made)

    def _within_the_minimum(self, specs: list[TaskSpec[Any]], now: datetime) -> list[TaskSpec[Any]]:
        kept = []
        for spec in specs:
            assert spec.schedule is not None
            try:
                schedules.check_interval(spec.schedule, self.settings.min_schedule_interval_seconds, now)
            except InvalidSchedule as error:
                log.error("schedule declared in code not written", schedule=spec.name, error=str(error))
                continue
            kept.append(spec)
        return kept

    def seconds_to_next(self) -> float:
        return max(0.0, self._next_at - time.monotonic())

    def _bounded(self, wait: float | None) -> float:
        """Look again at the next tick, and at least every sweep (a schedule made meanwhile)."""
        sweep = self.settings.relay_sweep_seconds
        return sweep if wait is None else min(sweep, max(MIN_WAIT_SECONDS, wait))

    def _plan(self, due: list[DueSchedule]) -> tuple[list[NewJob], list[Advance]]:
        jobs: list[NewJob] = []
        advances: list[Advance] = []
        for schedule in due:
            try:
                when = schedules.timing(schedule.cron, schedule.every_seconds, schedule.timezone)
            except InvalidSchedule as error:
                log.error(
                    "schedule has a timing this version cannot read", schedule=schedule.name, error=str(error)
                )
                advances.append(Advance(schedule.name, schedule.now + UNREADABLE_RETRY, None))
                continue
            plan = schedules.plan(
                when, schedule.next_run_at, schedule.now, self.settings.schedule_catch_up_seconds
            )
            jobs += [tick_job(schedule, tick) for tick in plan.fire]
            advances.append(Advance(schedule.name, plan.next_run_at, plan.fire[-1] if plan.fire else None))
        return jobs, advances


def tick_job(schedule: DueSchedule, tick: datetime) -> NewJob:
    """The job of one tick: the payload the schedule holds, validated when it was made."""
    return NewJob(
        task=schedule.task,
        queue=schedule.queue,
        payload_json=schedule.payload_json,
        max_attempts=schedule.max_attempts,
        schedule=schedule.name,
        scheduled_for=tick,
        flow=tick_flow(schedule),
        trace_context=tick_context(schedule.name, tick),  # a trace of its own, when tracing is on
    )


def tick_flow(schedule: DueSchedule) -> Flow | None:
    """The limits of the schedule's task, keyed by the payload the schedule holds (validated when
    the schedule was made; one this version cannot read has no limits rather than no job)."""
    spec = get_task(schedule.task)
    if spec is None or not spec.limits.any:
        return None
    try:
        return flow_of(spec.limits, spec.payload_model.model_validate_json(schedule.payload_json))
    except ValidationError:
        return None


def declaration(spec: TaskSpec[Any], now: datetime) -> NewSchedule:
    """The schedule a task declares in code: named after the task, with its payload's defaults."""
    timing = spec.schedule
    assert timing is not None
    return NewSchedule(
        name=spec.name,
        task=spec.name,
        queue=spec.queue,
        payload_json=spec.payload_model.model_validate({}).model_dump_json(),
        max_attempts=spec.retry.resolved_max_attempts(),
        cron=timing.cron,
        every_seconds=timing.every_seconds,
        timezone=timing.timezone,
        next_run_at=timing.next_after(now),
    )
