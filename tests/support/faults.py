"""What fault tests and the soak run share: reading the ledger and the effects table from
outside, a worker supervisor, raw publishing and peeking, and a steady poster.

Every wait here is bounded in time. Real restarts of the services live in `outages`.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import pika
import pika.exceptions
import psycopg
from psycopg.rows import dict_row

from tests.support.keys import auth
from tests.support.stack import Process, Stack

TERMINAL = ("succeeded", "dead", "cancelled")
EFFECT_TASK = "app.tasks.diagnostics.effect"
SIDE_EFFECT_TASK = "app.tasks.diagnostics.side_effect"
EFFECTS_TABLE = "diagnostic_effects"
QUEUE = "default"


# -- the ledger, read from outside -------------------------------------------------------


@dataclass
class Ledger:
    """Plain SQL against the test database; never through the code under test."""

    url: str

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=5)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def reset(self) -> None:
        with self.connect() as conn:
            tables = (
                "jobs, job_attempts, workers, relays, job_artifacts, stale_dead_letters, schedules,"
                " paused_queues, flow_rate_windows"
            )
            if self.has_effects_table(conn):
                tables += f", {EFFECTS_TABLE}"
            conn.execute(f"TRUNCATE {tables} CASCADE")

    def has_effects_table(self, conn: psycopg.Connection[dict[str, Any]] | None = None) -> bool:
        sql = f"SELECT to_regclass('{EFFECTS_TABLE}') IS NOT NULL AS present"
        row = conn.execute(sql).fetchone() if conn is not None else self.query(sql)[0]
        return bool(row and row["present"])

    def jobs(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        rows = self.query(
            "SELECT id::text AS id, state, attempts, run, max_attempts, last_error, worker_id,"
            " created_at, finished_at, lease_expires_at, published_at FROM jobs WHERE id = ANY(%(ids)s)",
            {"ids": [UUID(i) for i in ids]},
        )
        return {row["id"]: row for row in rows}

    def job(self, job_id: str) -> dict[str, Any]:
        return self.jobs([job_id])[job_id]

    def states(self, ids: Iterable[str]) -> Counter[str]:
        found = self.jobs(ids)
        counts = Counter(row["state"] for row in found.values())
        counts["missing"] = len(set(ids)) - len(found)
        return counts

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT run, attempt, worker_id, outcome, error FROM job_attempts"
            " WHERE job_id = %(id)s ORDER BY run, attempt",
            {"id": UUID(job_id)},
        )

    def effects(self, kind: str = "effect") -> Counter[str]:
        """How many rows of `kind` each job has in the effects table."""
        if not self.has_effects_table():
            return Counter()
        rows = self.query(
            f"SELECT job_id::text AS job_id, count(*) AS n FROM {EFFECTS_TABLE}"
            " WHERE kind = %(kind)s GROUP BY job_id",
            {"kind": kind},
        )
        return Counter({row["job_id"]: int(row["n"]) for row in rows})

    def outbox_size(self) -> int:
        rows = self.query(
            "SELECT count(*) AS n FROM jobs WHERE published_at IS NULL AND state IN ('queued', 'retrying')"
        )
        return int(rows[0]["n"])

    def running(self, ids: Iterable[str]) -> int:
        return self.states(ids)["running"]

    def wait_terminal(self, ids: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every job is terminal; fail with a summary of the stragglers."""
        wanted = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            found = self._try_jobs(wanted)
            if found is not None and all(found.get(i, {}).get("state") in TERMINAL for i in wanted):
                return found
            if time.monotonic() > deadline:
                found = found or {}
                late = [found.get(i, {"id": i, "state": "missing"}) for i in wanted]
                late = [row for row in late if row["state"] not in TERMINAL]
                raise AssertionError(
                    f"{len(late)} of {len(wanted)} jobs not terminal after {timeout}s: {late[:3]}"
                )
            time.sleep(0.2)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll until `predicate()` holds; the seconds it took."""
        started = time.monotonic()
        while not _holds(predicate):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - started

    def _try_jobs(self, ids: list[str]) -> dict[str, dict[str, Any]] | None:
        try:
            return self.jobs(ids)
        except psycopg.OperationalError:
            return None  # the database is restarting: ask again


def _holds(predicate: Callable[[], bool]) -> bool:
    try:
        return predicate()
    except (psycopg.OperationalError, httpx.HTTPError, pika.exceptions.AMQPError):
        return False


# -- workers ------------------------------------------------------------------------------

# Worker names stay unique across tests that share one stack, and so do their log files.
_worker_numbers = itertools.count(1)


@dataclass
class Workers:
    """Starts, signals and supervises worker processes of one test."""

    stack: Stack
    env: dict[str, str] = field(default_factory=dict)
    started: list[Process] = field(default_factory=list)

    def start(self, *, processes: int = 1, threads: int = 4, env: dict[str, str] | None = None) -> Process:
        name = f"worker-{next(_worker_numbers)}"
        process = self.stack.start_worker(
            name, processes=processes, threads=threads, env={**self.env, **(env or {})}
        )
        self.started.append(process)
        return process

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every worker at once, then wait; SIGKILL what is left at the deadline."""
        for process in self.started:
            with contextlib.suppress(ProcessLookupError):
                process.signal_group(signal.SIGCONT)
                process.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.started:
            if process.popen is None:
                continue
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-3000:]}" for p in self.started)


class Supervisor:
    """Plays compose's restart policy: starts a new worker whenever the current one exits."""

    def __init__(self, workers: Workers, max_restarts: int, **options: Any) -> None:
        self.workers = workers
        self.options = options
        self.max_restarts = max_restarts
        self.restarts = 0
        self.current = workers.start(**options)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.current.alive() or self.restarts >= self.max_restarts:
                continue
            self.restarts += 1
            self.current = self.workers.start(**self.options)


def wait_for_log(process: Process, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in process.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.name} never logged {needle!r}:\n{process.log()[-3000:]}")
        time.sleep(0.1)


# -- the broker, from outside -------------------------------------------------------------


def amqp(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    return pika.BlockingConnection(params)


def purge_queues(url: str, queues: Iterable[str] = ("default", "email", "exports")) -> None:
    connection = amqp(url)
    try:
        for queue in queues:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel = connection.channel()
                try:
                    channel.queue_purge(name)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass  # not declared yet
    finally:
        connection.close()


def publish_raw(url: str, queue: str, body: bytes, **properties: Any) -> None:
    """Put bytes straight on a queue, past the relay: a duplicate, or something worse."""
    connection = amqp(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2, **properties)
        channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props, mandatory=True)
    finally:
        connection.close()


def job_message(job_id: str, task: str, payload: dict[str, Any], run: int = 1, queue: str = QUEUE) -> bytes:
    """The message the relay publishes for a job, byte for byte the same encoding."""
    from dramatiq import Message

    message: Message[Any] = Message(
        queue_name=queue,
        actor_name=task,
        args=(),
        kwargs=payload,
        options={"job_id": job_id, "run": run, "broker_priority": 0},
    )
    return message.encode()


def peek_queue(url: str, queue: str, limit: int = 1000) -> list[bytes]:
    """The bodies waiting in a queue; they stay there (never acknowledged)."""
    connection = amqp(url)
    bodies: list[bytes] = []
    try:
        channel = connection.channel()
        for _ in range(limit):
            method, _props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            bodies.append(body)
    except pika.exceptions.ChannelClosedByBroker:
        pass  # the queue does not exist yet
    finally:
        connection.close()  # unacknowledged: RabbitMQ puts them back
    return bodies


# -- clients ------------------------------------------------------------------------------


@dataclass
class Poster:
    """Posts jobs at a steady rate from a thread; keeps every 202 and every other answer."""

    base_url: str
    payload: Callable[[int], dict[str, Any]]
    rate: float
    task: str = EFFECT_TASK
    timeout: float = 5.0  # seconds a request may take before it counts as unanswered
    accepted: list[tuple[str, float]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    # Refusals that break I5: not JSON, or a 503 without Retry-After.
    dishonest: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def ids(self) -> list[str]:
        return [job_id for job_id, _ in self.accepted]

    def start(self) -> Poster:
        self._thread = threading.Thread(target=self._run, name="poster", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        n = 0
        with httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=auth()) as client:
            while not self._stop.is_set():
                body = {"task": self.task, "payload": self.payload(n)}
                n += 1
                try:
                    response = client.post("/api/v1/jobs", json=body)
                    if response.status_code == 202:
                        self.accepted.append((str(response.json()["id"]), time.time()))
                    else:
                        self.refused[str(response.status_code)] += 1
                        self.dishonest += honesty_problems(response)
                except httpx.HTTPError as error:
                    self.refused[type(error).__name__] += 1
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))


def honesty_problems(response: httpx.Response) -> list[str]:
    """What breaks I5 in an answer: not JSON, a 503 without Retry-After, any other 5xx."""
    problems = []
    if not response.headers.get("content-type", "").startswith("application/json"):
        problems.append(f"{response.status_code} not JSON: {response.text[:100]!r}")
    if response.status_code == 503 and "retry-after" not in response.headers:
        problems.append("503 without Retry-After")
    if response.status_code >= 500 and response.status_code != 503:
        problems.append(f"{response.status_code}: {response.text[:200]}")
    return problems


@dataclass
class Reader:
    """GETs one job and the newest page of jobs from a thread, as a dashboard or a client polls."""

    base_url: str
    job_id: str
    answers: Counter[int] = field(default_factory=Counter)
    dishonest: list[str] = field(default_factory=list)
    # (monotonic time, status) of every answer, to see when reads came back.
    timeline: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0, headers=auth()) as client:
            for path in itertools.cycle([f"/api/v1/jobs/{self.job_id}", "/api/v1/jobs?limit=5"]):
                if self._stop.is_set():
                    return
                try:
                    response = client.get(path)
                except httpx.HTTPError as error:
                    self.dishonest.append(f"no answer: {error!r}")
                else:
                    self.answers[response.status_code] += 1
                    self.timeline.append((time.monotonic(), response.status_code))
                    if response.status_code != 200:
                        self.dishonest += honesty_problems(response)
                self._stop.wait(0.05)


def post(base_url: str, task: str, payload: dict[str, Any], timeout: float = 10.0) -> str:
    with httpx.Client(base_url=base_url, timeout=timeout, headers=auth()) as client:
        response = client.post("/api/v1/jobs", json={"task": task, "payload": payload})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def post_many(base_url: str, task: str, payloads: Iterable[dict[str, Any]]) -> list[str]:
    ids = []
    with httpx.Client(base_url=base_url, timeout=10.0, headers=auth()) as client:
        for payload in payloads:
            response = client.post("/api/v1/jobs", json={"task": task, "payload": payload})
            assert response.status_code == 202, response.text
            ids.append(str(response.json()["id"]))
    return ids
