"""Group commit for the worker: writes from all threads, one statement and one commit per batch.

A worker process runs many threads; each used to finish its job with a statement and a
durable commit of its own. Here one thread per kind of write takes whatever the other
threads queued meanwhile and writes it as one statement on a connection of its own
(autocommit, prepared). With little load a batch is one job and nothing waits; under load
the database sees a fraction of the statements and WAL flushes.

A caller either waits for its batch's commit (`submit`), or queues its item with a callback
that runs on the batcher's thread once the batch committed or failed (`submit_nowait`), so
that its thread is free for the next job meanwhile. A batch whose database is away is
tried again, with backoff, for `retry_seconds`; then its callers get the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import psycopg

from app.ledger.connections import own_connection
from app.logs import Outage, get_logger

log = get_logger("conveyor.worker")

Item = TypeVar("Item")
Out = TypeVar("Out")
Done = Callable[[Any, BaseException | None], None]  # (result, error), on the batcher's thread


class _Slot:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher(Generic[Item, Out]):
    """A thread and a connection that write queued items in batches."""

    def __init__(
        self,
        name: str,
        conninfo: str,
        write: Callable[[psycopg.Connection[Any], Sequence[Item]], list[Out]],
        *,
        outage: Outage,
        max_batch: int = 128,
        max_queued: int = 1024,
        retry_seconds: float = 60.0,
    ) -> None:
        self.name = name
        self.conninfo = conninfo
        self.write = write
        self.outage = outage
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.retry_seconds = retry_seconds
        self._items: list[tuple[Item, Done]] = []
        lock = threading.Lock()
        self._ready = threading.Condition(lock)  # items queued, or closed
        self._room = threading.Condition(lock)  # fewer than max_queued items queued
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=f"conveyor-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: Item, timeout: float = 90.0) -> Out:
        """Write `item` with whatever else is queued and wait for it; raises the batch's error."""
        slot = _Slot()
        self.submit_nowait(item, slot)
        if not slot.done.wait(timeout):
            raise TimeoutError(f"{self.name} batch not written within {timeout}s")
        if slot.error is not None:
            raise slot.error
        result: Out = slot.result
        return result

    def submit_nowait(self, item: Item, done: Done) -> None:
        """Queue `item`; `done(result, error)` runs on the batcher's thread after its batch.
        Waits only while `max_queued` items are already queued (the database is slow)."""
        with self._ready:
            while len(self._items) >= self.max_queued and not self._closed:
                self._room.wait(1.0)
            if self._closed:
                raise RuntimeError(f"{self.name} batcher is closed")
            self._items.append((item, done))
            self._ready.notify()

    def close(self) -> None:
        """Write what is queued, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._thread.join(timeout=self.retry_seconds + 10)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closed:
                    self._ready.wait()
                if not self._items:
                    break
                batch = self._items[: self.max_batch]
                del self._items[: self.max_batch]
                self._room.notify_all()
            self._write(batch)
        if self._conn is not None:
            self._conn.close()

    def _write(self, batch: list[tuple[Item, Done]]) -> None:
        items = [item for item, _ in batch]
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.1
        while True:
            try:
                results = self._attempt(items)
            except psycopg.OperationalError as error:
                if time.monotonic() < deadline:
                    self.outage.failed(error, during=self.name)
                    time.sleep(pause)
                    pause = min(pause * 2, 2.0)
                    continue
                self._tell(batch, None, error)
                return
            except BaseException as error:
                self._tell(batch, None, error)
                return
            self.outage.recovered()
            for (_, done), result in zip(batch, results, strict=True):
                self._call(done, result, None)
            return

    def _attempt(self, items: list[Item]) -> list[Out]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = own_connection(self.conninfo)
            return self.write(self._conn, items)
        except BaseException as error:
            if self._conn is not None and (self._conn.broken or isinstance(error, psycopg.OperationalError)):
                self._conn.close()
                self._conn = None
            raise

    def _tell(self, batch: list[tuple[Item, Done]], result: Any, error: BaseException | None) -> None:
        for _, done in batch:
            self._call(done, result, error)

    @staticmethod
    def _call(done: Done, result: Any, error: BaseException | None) -> None:
        try:
            done(result, error)
        except Exception:  # a callback's failure must not stop the batcher
            log.exception("a batch callback failed")
