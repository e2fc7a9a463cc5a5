"""One reader of the event log per API process, fanning what it reads out to waiters and streams.

The pump holds two connections of its own: one LISTENs on `conveyor_events` (every statement
that logs an event wakes it when its transaction commits), the other reads. On each wake it
reads the new events once, with the shared exact reader (app/ledger/events.py; their jobs' rows
come in the same statement when a subscription wants job views), and hands each to the
subscriptions whose filter it matches; nothing polls per waiter or per stream. When a
read sees events held above the horizon (an older transaction still open), it looks again
shortly, since the transaction holding them may end without an event of its own and so
without a wake; otherwise it reads again at least every few seconds in case a wake was lost.

A subscription receives, in order, every matching event after the pump's position at the time
it subscribed (`start`): a stream catches up from the table to there, then follows the pump.
A subscription that falls too far behind is marked `overflowed` and its buffer dropped: its
stream catches up from the table again instead of holding the process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from app.ledger import events
from app.ledger.event_schema import EVENTS_CHANNEL
from app.ledger.events import Cursor, Event, EventFilter
from app.logs import Outage, get_logger

log = get_logger("conveyor.events")

# A job's view for the events' `data:`, from its row as the events' read returned it.
JobViews = Callable[[Mapping[str, Any]], dict[str, Any]]
PAGE = 1000
# While events are held above the horizon: how soon to look again (doubling up to HELD_MAX).
HELD_FIRST, HELD_MAX = 0.002, 0.05
# Without a wake: read anyway after this long (a wake lost to a reconnect costs no more).
SWEEP_SECONDS = 5.0
# Deliveries a subscription may hold before it is marked overflowed.
BUFFER = 10_000


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    job: dict[str, Any] | None  # the job's view when it was read (None: not asked, or pruned)


class Subscription:
    """What one waiter or stream receives from the pump."""

    def __init__(self, where: EventFilter, start: Cursor, *, views: bool) -> None:
        self.where = where
        self.start = start
        self.views = views
        self.overflowed = False
        self._items: deque[Delivery] = deque()
        self._ready = asyncio.Event()

    def offer(self, delivery: Delivery) -> None:
        if self.overflowed:
            return
        if len(self._items) >= BUFFER:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(delivery)
        self._ready.set()

    async def take(self, within: float) -> list[Delivery]:
        """What arrived, in order, waiting up to `within` seconds for something (else [])."""
        if not self._items and not self.overflowed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), within)
        self._ready.clear()
        taken = list(self._items)
        self._items.clear()
        return taken


class EventPump:
    def __init__(self, conninfo: str, views: JobViews, connect_args: dict[str, Any] | None = None) -> None:
        self.conninfo = conninfo
        self.position: Cursor | None = None
        self._views = views
        self._connect_args = connect_args or {}
        self._by_job: dict[UUID, set[Subscription]] = {}
        self._others: set[Subscription] = set()
        self._viewers = 0  # subscriptions that want job views: the read then returns the jobs too
        self._wake = asyncio.Event()
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, "database (event pump)")
        self.reads = 0

    async def start(self, within: float) -> None:
        """Start reading (once), and wait until the pump knows where the log is."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="conveyor-event-pump")
        await asyncio.wait_for(self._started.wait(), within)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(self, where: EventFilter, *, views: bool = False) -> Subscription:
        assert self.position is not None, "start the pump first"
        subscription = Subscription(where, self.position, views=views)
        self._viewers += views
        if where.job_id is not None:
            self._by_job.setdefault(where.job_id, set()).add(subscription)
        else:
            self._others.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        job_id = subscription.where.job_id
        if job_id is None:
            held = subscription in self._others
            self._others.discard(subscription)
        else:
            waiting = self._by_job.get(job_id, set())
            held = subscription in waiting
            waiting.discard(subscription)
            if not waiting:
                self._by_job.pop(job_id, None)
        if held:
            self._viewers -= subscription.views

    @property
    def subscribers(self) -> int:
        return len(self._others) + sum(len(s) for s in self._by_job.values())

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except (psycopg.OperationalError, OSError) as error:
                self._outage.failed(error)
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # a task of its own: nobody else would see the error
                log.exception("event pump failed; starting again")
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        connect = psycopg.AsyncConnection.connect
        async with (
            await connect(self.conninfo, autocommit=True, **self._connect_args) as listener,
            await connect(self.conninfo, autocommit=True, **self._connect_args) as reader,
        ):
            await listener.execute(f"LISTEN {EVENTS_CHANNEL}")
            if self.position is None:  # from now: a reconnect goes on from where it was
                self.position = await events.head(reader)
            self._outage.recovered()
            self._started.set()
            listening = asyncio.create_task(self._listen(listener))
            try:
                pause = HELD_FIRST
                while True:
                    held = await self._drain(reader)
                    pause = min(pause * 2, HELD_MAX) if held else HELD_FIRST
                    await self._wait(listening, pause if held else SWEEP_SECONDS)
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await listening

    async def _listen(self, listener: psycopg.AsyncConnection[Any]) -> None:
        async for _ in listener.notifies():
            self._wake.set()

    async def _wait(self, listening: asyncio.Task[None], within: float) -> None:
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({woken, listening}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if listening.done():  # the listening connection broke: reconnect
            listening.result()
            raise psycopg.OperationalError("the event listener stopped")
        self._wake.clear()

    async def _drain(self, reader: psycopg.AsyncConnection[Any]) -> bool:
        """Read and hand out everything readable; whether events are held above the horizon."""
        assert self.position is not None
        while True:
            page = await events.read(reader, self.position, limit=PAGE, jobs=self._viewers > 0)
            self.reads += 1
            if page.events:
                self._hand_out(page)
            self.position = page.next
            if not page.full:
                return page.held

    def _hand_out(self, page: events.Page) -> None:
        """Each event to the subscriptions it matches, with its job's view (built once per job
        of the page, from the row the read returned, only when a subscription wants it)."""
        views: dict[UUID, dict[str, Any] | None] = {}
        for event in page.events:
            matching = [s for s in self._others if s.where.matches(event)]
            matching += [s for s in self._by_job.get(event.job_id, ()) if s.where.matches(event)]
            if not matching:
                continue
            view: dict[str, Any] | None = None
            if any(s.views for s in matching):
                if event.job_id not in views:
                    row = page.jobs.get(event.job_id)
                    views[event.job_id] = None if row is None else self._views(row)
                view = views[event.job_id]
            delivery = Delivery(event, view)
            for subscription in matching:
                subscription.offer(delivery)
