"""Group commit for the worker: claims and successes from all threads, one statement per batch.

A worker process runs many threads; each used to claim and finish its job with a statement
and a durable commit of its own. Here one thread per kind of write takes whatever the
other threads queued meanwhile and writes it as one statement on a connection of its own
(autocommit, prepared). Each caller waits for its batch's commit, so a claim still holds
before the task runs and a success is durable before its message is acknowledged. With
little load a batch is one job and nothing waits; under load the database sees a fraction
of the statements and WAL flushes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import psycopg

Item = TypeVar("Item")
Out = TypeVar("Out")


class _Slot:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Batcher(Generic[Item, Out]):
    """A thread and a connection that write queued items in batches; `submit` waits for its batch."""

    def __init__(
        self,
        name: str,
        conninfo: str,
        write: Callable[[psycopg.Connection[Any], Sequence[Item]], list[Out]],
        *,
        max_batch: int = 128,
    ) -> None:
        self.name = name
        self.conninfo = conninfo
        self.write = write
        self.max_batch = max_batch
        self._items: list[tuple[Item, _Slot]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=f"conveyor-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: Item, timeout: float = 30.0) -> Out:
        """Write `item` with whatever else is queued; raises the batch's error."""
        slot = _Slot()
        with self._ready:
            if self._closed:
                raise RuntimeError(f"{self.name} batcher is closed")
            self._items.append((item, slot))
            self._ready.notify()
        if not slot.done.wait(timeout):
            raise TimeoutError(f"{self.name} batch not written within {timeout}s")
        if slot.error is not None:
            raise slot.error
        result: Out = slot.result
        return result

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closed:
                    self._ready.wait()
                if not self._items:
                    break
                batch = self._items[: self.max_batch]
                del self._items[: self.max_batch]
            self._write(batch)
        if self._conn is not None:
            self._conn.close()

    def _write(self, batch: list[tuple[Item, _Slot]]) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
            results = self.write(self._conn, [item for item, _ in batch])
        except BaseException as error:
            if self._conn is not None and (self._conn.broken or isinstance(error, psycopg.OperationalError)):
                self._conn.close()
                self._conn = None
            for _, slot in batch:
                slot.error = error
                slot.done.set()
            return
        for (_, slot), result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()
