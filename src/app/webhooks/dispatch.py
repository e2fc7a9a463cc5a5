"""Delivering webhooks, beside the relay: a fan-out thread and a sender thread per relay process.

The fan-out reads the event log after its mark and, in one statement, makes a delivery for
each subscription an event matches and moves the mark past it (`ledger.webhooks.fan_out`):
at least once, nothing skipped; any number of relays may run it, one at a time holds the mark.
The sender runs an asyncio loop with an httpx client: it takes due deliveries with a lease (as
many as it has free slots, WEBHOOK_CONCURRENCY in flight at most), POSTs each signed, and writes
what came of it: delivered on a 2xx, due again after a jittered backoff on anything else or a
timeout, dead after WEBHOOK_MAX_ATTEMPTS. Neither thread touches the relay's publishing loop or
its connection, so a slow receiver never delays a job.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC

import httpx
import orjson
import psycopg
from sqlalchemy.exc import OperationalError

from app.jobs.backoff import backoff_seconds
from app.ledger import webhooks as ledger
from app.ledger.connections import own_connection
from app.ledger.urls import own_conninfo
from app.logs import Outage, first_line, get_logger
from app.settings import Settings
from app.webhooks import metrics, signing
from app.webhooks.targets import CheckedTransport

log = get_logger("conveyor.webhooks")

# Events fanned out per statement; a full batch is followed by the next at once.
FAN_OUT_BATCH = 500
# A taken delivery is not due again for its request's timeout plus this (its sender may be slow
# to write the outcome); only a sender that died leaves it to another that long.
LEASE_MARGIN_SECONDS = 30.0
# The start of an error a delivery keeps (its receiver's answer, or the exception).
ERROR_CHARS = 500
MAX_PAUSE_SECONDS = 5.0
# While idle with requests in flight, the sender looks this often whether one ended.
IDLE_STEP_SECONDS = 0.02

Connection = psycopg.Connection[tuple[object, ...]]


def body_of(due: ledger.Due) -> bytes:
    """The JSON body of a delivery: the same bytes on every attempt."""
    created = due.event_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    event = {"id": due.event_id, "type": due.event_type, "created": created, "data": due.data}
    return orjson.dumps(event)


def headers_of(due: ledger.Due, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        "User-Agent": "Conveyor-Webhooks/1",
        signing.EVENT_ID_HEADER: due.event_id,
        signing.SIGNATURE_HEADER: signing.header(due.secret, timestamp, body),
    }


class Dispatcher:
    """The fan-out and the sender of one relay process, each thread with a connection of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fanned_out = 0
        self.sent = 0
        self._wake = threading.Event()  # the fan-out made deliveries: the sender looks at once
        self._threads: list[threading.Thread] = []
        self._fan_outage = Outage(log, "database (webhook fan-out)")
        self._send_outage = Outage(log, "database (webhook sender)")
        self._fan_conn: Connection | None = None
        self._send_conn: Connection | None = None
        # Attempts that ended, appended by the sender's event loop; written with its next take.
        self._outcomes: list[ledger.Outcome] = []

    def start(self, stop: threading.Event) -> None:
        for name, target in (
            ("conveyor-webhook-fanout", self.fan_out_loop),
            ("conveyor-webhook-sender", self.send_loop),
        ):
            thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float = 10.0) -> None:
        for thread in self._threads:
            thread.join(timeout)
        self.close()

    def close(self) -> None:
        self._fan_conn = _close(self._fan_conn)
        self._send_conn = _close(self._send_conn)

    # The fan-out

    def fan_out_once(self) -> ledger.FanOut:
        """Fan out until the log holds nothing readable after the mark; the last step's counts,
        with the deliveries of every step."""
        made = 0
        while True:
            self._fan_conn = _alive(self._fan_conn, self.settings)
            step = ledger.fan_out(self._fan_conn, FAN_OUT_BATCH)
            made += step.deliveries
            if step.deliveries:
                self._wake.set()
            if not step.held or step.events < FAN_OUT_BATCH:
                self.fanned_out += made
                return ledger.FanOut(step.held, step.events, made)

    def fan_out_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.fan_out_once()
            except (OperationalError, psycopg.OperationalError) as error:
                self._fan_outage.failed(error)
                self._fan_conn = _close(self._fan_conn)
                stop.wait(MAX_PAUSE_SECONDS)
                continue
            except Exception:  # a thread of its own: nobody else would see the error
                log.exception("webhook fan-out failed; trying again")
                self._fan_conn = _close(self._fan_conn)
                stop.wait(MAX_PAUSE_SECONDS)
                continue
            self._fan_outage.recovered()
            stop.wait(self.settings.webhook_poll_seconds)

    # The sender

    def send_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                asyncio.run(self._send(stop))
            except Exception:  # a thread of its own: nobody else would see the error
                log.exception("webhook sender failed; starting again")
                self._send_conn = _close(self._send_conn)
                stop.wait(MAX_PAUSE_SECONDS)

    async def _send(self, stop: threading.Event) -> None:
        settings = self.settings
        slots = settings.webhook_concurrency
        timeout = httpx.Timeout(settings.webhook_timeout_seconds)
        transport = CheckedTransport(settings, max_connections=slots)
        in_flight: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False) as client:
            while not stop.is_set():
                ended, self._outcomes = self._outcomes, []
                taken = await asyncio.to_thread(self._write_and_take, ended, slots - len(in_flight))
                for due in taken:
                    task = asyncio.create_task(self.deliver(client, due))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if taken and len(in_flight) == slots:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                elif not taken:
                    await self._idle(stop, in_flight)
            if in_flight:
                await asyncio.wait(in_flight, timeout=settings.webhook_timeout_seconds)
            await asyncio.to_thread(self._write_and_take, self._outcomes, 0)

    def _write_and_take(self, outcomes: list[ledger.Outcome], limit: int) -> list[ledger.Due]:
        """Write the outcomes of attempts that ended, then take up to `limit` due deliveries
        (on the sender's connection, in a thread: the event loop goes on sending meanwhile)."""
        try:
            self._send_conn = _alive(self._send_conn, self.settings)
            if outcomes:
                ledger.finish(self._send_conn, outcomes)
            lease = self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
            taken = ledger.take(self._send_conn, limit, lease) if limit > 0 else []
        except (OperationalError, psycopg.OperationalError) as error:
            # Outcomes not written are lost: their leases run out and the deliveries are sent again.
            self._send_outage.failed(error)
            self._send_conn = _close(self._send_conn)
            return []
        self._send_outage.recovered()
        for outcome in outcomes:
            metrics.DELIVERIES.labels(outcome.state if outcome.state != "pending" else "failed").inc()
        self.sent += len(outcomes)
        return taken

    async def _idle(self, stop: threading.Event, in_flight: set[asyncio.Task[None]]) -> None:
        """Wait for the poll interval, a wake from the fan-out, an attempt ending, or the stop."""
        deadline = time.monotonic() + self.settings.webhook_poll_seconds
        while time.monotonic() < deadline and not stop.is_set() and not self._wake.is_set():
            if in_flight:
                done, _ = await asyncio.wait(in_flight, timeout=IDLE_STEP_SECONDS)
                if done:
                    break
            else:
                await asyncio.sleep(IDLE_STEP_SECONDS)
        self._wake.clear()

    async def deliver(self, client: httpx.AsyncClient, due: ledger.Due) -> None:
        """One attempt of `due`; its outcome is written with the next take."""
        body = body_of(due)
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                answer = await client.post(due.url, content=body, headers=headers_of(due, body))
            status = answer.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {answer.text[:ERROR_CHARS]}".strip()
        except TimeoutError:
            error = f"timed out after {self.settings.webhook_timeout_seconds:g} s"
        except Exception as failed:  # a refused target, a connection error: the attempt failed
            error = f"{type(failed).__name__}: {first_line(failed)}"[:ERROR_CHARS]
        self._outcomes.append(self.outcome(due, status, error))

    def outcome(self, due: ledger.Due, status: int | None, error: str | None) -> ledger.Outcome:
        settings = self.settings
        if error is None:
            return ledger.Outcome(due, "delivered", status, None)
        if due.attempt >= settings.webhook_max_attempts:
            state, retry_in = "dead", 0.0
        else:
            state = "pending"
            retry_in = backoff_seconds(
                due.attempt, settings.webhook_backoff_base, settings.webhook_backoff_max
            )
        log.warning(
            "webhook delivery failed",
            delivery=due.id,
            webhook=str(due.webhook_id),
            event_id=due.event_id,
            attempt=due.attempt,
            state=state,
            error=error,
        )
        return ledger.Outcome(due, state, status, error, retry_in)


def _alive(conn: Connection | None, settings: Settings) -> Connection:
    if conn is None or conn.closed or conn.broken:
        return own_connection(own_conninfo())
    return conn


def _close(conn: Connection | None) -> Connection | None:
    """Close `conn` if there is one; None, the connection the caller holds from now on."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            log.debug("closing a webhook connection failed", exc_info=True)
    return None
