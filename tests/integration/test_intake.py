"""The accept path's group commit wakes the relay so that it sees every accepted job."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from app.accept.intake import Intake
from app.ledger.jobs import NewJob
from tests.support.infra import Infra

pytestmark = pytest.mark.anyio


def echo() -> NewJob:
    return NewJob("app.tasks.example.echo", "default", '{"message": "hi"}', 5)


class Relay:
    """A stand-in for the relay's listener: on each wake-up it counts the rows it can see."""

    def __init__(self, libpq_url: str) -> None:
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._conn = psycopg.connect(libpq_url, autocommit=True)
        self._conn.execute("LISTEN conveyor_jobs")
        self._reader = psycopg.connect(libpq_url, autocommit=True)  # a listening one cannot query
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Wake-ups that arrived together are one: the relay takes every due row when it wakes.
            if any(True for _ in self._conn.notifies(timeout=0.05, stop_after=1)):
                row = self._reader.execute("SELECT count(*) FROM jobs").fetchone()
                assert row is not None
                self.seen.append(int(row[0]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()
        self._reader.close()


async def settled(intake: Intake) -> None:
    """Until the intake's background work (batches, a NOTIFY of its own) is done."""
    while intake._tasks:
        await asyncio.gather(*list(intake._tasks), return_exceptions=True)


async def test_after_every_burst_of_concurrent_jobs_the_relay_is_woken_and_sees_all_of_them(
    clean_ledger: Infra,
) -> None:
    relay = Relay(clean_ledger.libpq_url)
    intake = Intake(clean_ledger.libpq_url, max_batch=7)  # many batches, two writers at once
    accepted = 0
    try:
        for burst in (1, 2, 30, 200, 5, 120):
            await asyncio.gather(*(intake.submit(echo()) for _ in range(burst)))
            accepted += burst
            await settled(intake)
            for _ in range(40):  # up to 2 s for the last wake-up to be heard
                if relay.seen and relay.seen[-1] == accepted:
                    break
                await asyncio.sleep(0.05)
            assert relay.seen, "the relay was never woken"
            assert relay.seen[-1] == accepted, (
                f"after a burst of {burst}, the last wake-up showed {relay.seen[-1]} of {accepted} jobs:"
                " a batch committed after the last NOTIFY"
            )
    finally:
        await intake.close()
        relay.close()
