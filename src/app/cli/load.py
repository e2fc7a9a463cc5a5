"""`conveyor loadtest`: post N jobs at a steady rate, wait for every one to end, report what happened.

Unlike an HTTP load tool it follows each accepted job to its terminal state, so it measures
the promise a 202 makes (the job will run) and not only how fast the API answers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.ledger.schema import TERMINAL_STATES as TERMINAL

# httpx and Rich load on use: `conveyor health` runs every few seconds in each container.
if TYPE_CHECKING:
    import httpx
    from rich.progress import Progress
    from rich.table import Table

ECHO_TASK = "app.tasks.example.echo"
TERMINAL_STATES = tuple(sorted(TERMINAL))
# The list endpoint's largest page: one request reads this many finished jobs.
PAGE_LIMIT = 200
# Below this many unfinished jobs, asking for each one is cheaper than paging the lists.
FETCH_ONE_BY_ONE_BELOW = 400
POLL_SECONDS = 0.5
# Jobs created this long before the run started are certainly not ours (clock slack).
CLOCK_SLACK_SECONDS = 60.0

EXIT_LOST = 1
EXIT_NOT_ACCEPTED = 2


@dataclass
class PostResult:
    """What the load generator saw of its POSTs."""

    accepted: dict[str, float] = field(default_factory=dict)  # job id -> POST latency (s)
    errors: Counter[str] = field(default_factory=Counter)  # status code or error type -> count
    seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """One accepted job's end, as the API reports it."""

    state: str
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Summary:
    task: str
    jobs: int
    rate: float
    accepted: int
    not_accepted: dict[str, int]
    states: dict[str, int]
    lost: int
    post_latency: Sequence[float]
    to_succeeded: Sequence[float]
    post_seconds: float
    succeeded_per_second: float
    wall_seconds: float

    @property
    def exit_code(self) -> int:
        if self.lost:
            return EXIT_LOST
        if self.not_accepted:
            return EXIT_NOT_ACCEPTED
        return 0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of the values; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(
    task: str, jobs: int, rate: float, posts: PostResult, outcomes: dict[str, Outcome], wall: float
) -> Summary:
    states = Counter(outcome.state for outcome in outcomes.values())
    succeeded = [o for o in outcomes.values() if o.state == "succeeded" and o.finished_at is not None]
    to_succeeded = [(o.finished_at - o.created_at).total_seconds() for o in succeeded if o.finished_at]
    span = 0.0
    if succeeded:
        first = min(o.created_at for o in succeeded)
        last = max(o.finished_at for o in succeeded if o.finished_at)
        span = (last - first).total_seconds()
    return Summary(
        task=task,
        jobs=jobs,
        rate=rate,
        accepted=len(posts.accepted),
        not_accepted=dict(posts.errors),
        states={state: states.get(state, 0) for state in TERMINAL_STATES},
        lost=len(posts.accepted) - len(outcomes),
        post_latency=list(posts.accepted.values()),
        to_succeeded=to_succeeded,
        post_seconds=posts.seconds,
        succeeded_per_second=len(succeeded) / span if span > 0 else 0.0,
        wall_seconds=wall,
    )


def render(summary: Summary) -> Table:
    from rich.table import Table

    def ms(values: Sequence[float]) -> str:
        return " / ".join(f"{percentile(values, q) * 1000:.0f}" for q in (50, 95, 99))

    table = Table(title=f"loadtest: {summary.jobs} x {summary.task} at {summary.rate:g}/s", box=None)
    table.add_column("measure", style="bold")
    table.add_column("value", justify="right")
    errors = ", ".join(f"{key}: {count}" for key, count in sorted(summary.not_accepted.items()))
    rows = [
        ("accepted", str(summary.accepted)),
        ("not accepted", str(sum(summary.not_accepted.values())) + (f" ({errors})" if errors else "")),
        *((state, str(count)) for state, count in summary.states.items()),
        ("lost", str(summary.lost)),
        ("POST latency p50 / p95 / p99 (ms)", ms(summary.post_latency)),
        ("POST -> succeeded p50 / p95 / p99 (ms)", ms(summary.to_succeeded)),
        ("POST rate achieved (/s)", f"{summary.accepted / summary.post_seconds:.1f}"),
        ("throughput, succeeded (/s)", f"{summary.succeeded_per_second:.1f}"),
        ("wall time (s)", f"{summary.wall_seconds:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


class Connections:
    """`size` keep-alive connections, each a client of its own, lent out one request at a time.

    Taking a free client is also the concurrency bound. One connection per client because
    httpcore scans every pooled connection (a syscall each) on every request: with one
    shared pool of 64 that scan was a third of the load generator's CPU, and the load
    generator shares the machine's cores with what it measures.
    """

    def __init__(self, api: str, size: int, key: str = "") -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.clients = [
            httpx.AsyncClient(base_url=api, limits=limits, timeout=30.0, headers=headers) for _ in range(size)
        ]
        self._free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self.clients:
            self._free.put_nowait(client)

    async def take(self) -> httpx.AsyncClient:
        return await self._free.get()

    def give_back(self, client: httpx.AsyncClient) -> None:
        self._free.put_nowait(client)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))


async def post_jobs(
    connections: Connections, body: dict[str, Any], jobs: int, rate: float, progress: Progress
) -> PostResult:
    """POST `jobs` jobs, job i at start + i/rate, never more requests in flight than connections."""
    import httpx

    result = PostResult()
    bar = progress.add_task("posting", total=jobs)
    content = json.dumps(body).encode()
    headers = {"content-type": "application/json"}

    async def post_one(client: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        try:
            response = await client.post("/api/v1/jobs", content=content, headers=headers)
        except httpx.HTTPError as error:
            result.errors[type(error).__name__] += 1
        else:
            if response.status_code == 202:
                result.accepted[response.json()["id"]] = time.perf_counter() - started
            else:
                result.errors[str(response.status_code)] += 1
        finally:
            connections.give_back(client)
            progress.advance(bar)

    loop = asyncio.get_running_loop()
    start = loop.time()
    in_flight: list[asyncio.Task[None]] = []
    for i in range(jobs):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        client = await connections.take()
        in_flight.append(asyncio.create_task(post_one(client)))
    await asyncio.gather(*in_flight)
    result.seconds = loop.time() - start
    return result


async def _scan_finished(
    client: httpx.AsyncClient, pending: set[str], since: float, found: dict[str, Outcome]
) -> None:
    """Page through the finished jobs, newest first, back to the run's start."""
    for state in TERMINAL_STATES:
        cursor: str | None = None
        while pending:
            params: dict[str, str | int] = {"state": state, "limit": PAGE_LIMIT}
            if cursor:
                params["cursor"] = cursor
            response = await client.get("/api/v1/jobs", params=params)
            response.raise_for_status()
            page = response.json()
            for item in page["items"]:
                _record(item, pending, found)
            items, cursor = page["items"], page["next_cursor"]
            if not cursor or _parse(items[-1]["created_at"]).timestamp() < since:
                break


async def _fetch_each(connections: Connections, pending: set[str], found: dict[str, Outcome]) -> None:
    async def fetch(job_id: str) -> None:
        client = await connections.take()
        try:
            response = await client.get(f"/api/v1/jobs/{job_id}")
        finally:
            connections.give_back(client)
        if response.status_code == 200:
            _record(response.json(), pending, found)

    await asyncio.gather(*(fetch(job_id) for job_id in list(pending)))


def _record(item: dict[str, Any], pending: set[str], found: dict[str, Outcome]) -> None:
    job_id = str(item["id"])
    if job_id in pending and item["state"] in TERMINAL_STATES:
        pending.discard(job_id)
        finished = item.get("finished_at")
        found[job_id] = Outcome(
            item["state"], _parse(item["created_at"]), _parse(finished) if finished else None
        )


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


async def await_terminal(
    connections: Connections,
    job_ids: Sequence[str],
    since: float,
    wait_seconds: float,
    progress: Progress,
) -> dict[str, Outcome]:
    """Poll the API until every job is terminal or `wait_seconds` pass; the jobs that ended."""
    import httpx

    pending = set(job_ids)
    found: dict[str, Outcome] = {}
    bar = progress.add_task("terminal", total=len(pending))
    deadline = time.monotonic() + wait_seconds
    while pending:
        try:
            if len(pending) >= FETCH_ONE_BY_ONE_BELOW:
                client = await connections.take()
                try:
                    await _scan_finished(client, pending, since, found)
                finally:
                    connections.give_back(client)
            else:
                await _fetch_each(connections, pending, found)
        except httpx.HTTPError:
            pass  # an API hiccup is not a lost job: ask again until the deadline
        progress.update(bar, completed=len(found))
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    return found


async def run(
    api: str,
    task: str,
    payload: dict[str, Any],
    jobs: int,
    rate: float,
    concurrency: int,
    wait_seconds: float,
    key: str = "",
) -> Summary:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    since = time.time() - CLOCK_SLACK_SECONDS
    started = time.monotonic()
    columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    connections = Connections(api, concurrency, key)
    try:
        with Progress(*columns, console=Console(stderr=True)) as progress:
            body = {"task": task, "payload": payload}
            posts = await post_jobs(connections, body, jobs, rate, progress)
            outcomes = await await_terminal(connections, list(posts.accepted), since, wait_seconds, progress)
    finally:
        await connections.aclose()
    return summarize(task, jobs, rate, posts, outcomes, time.monotonic() - started)


def loadtest(
    jobs: Annotated[int, typer.Option(min=1, help="How many jobs to post")] = 12_000,
    rate: Annotated[float, typer.Option(min=0.1, help="Jobs posted per second")] = 200.0,
    task: Annotated[str, typer.Option(help="Task name")] = ECHO_TASK,
    api: Annotated[str | None, typer.Option(help="API base URL [default: API_BASE_URL]")] = None,
    key: Annotated[
        str | None,
        typer.Option(help="API key with enqueue and read [default: CONVEYOR_KEY]", show_default=False),
    ] = None,
    payload: Annotated[
        str | None, typer.Option(help='Payload JSON [default: {"message": "loadtest"} for echo, else {}]')
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at most")] = 32,
    timeout: Annotated[
        float, typer.Option(help="Seconds after the last POST before an unfinished job counts as lost")
    ] = 120.0,
) -> None:
    """Post jobs at a steady rate, wait until each is terminal, print outcomes and latencies.

    Exits 1 if an accepted job never finished (lost), 2 if some POSTs were not accepted.
    """
    if payload is None:
        body: Any = {"message": "loadtest"} if task == ECHO_TASK else {}
    else:
        try:
            body = json.loads(payload)
        except json.JSONDecodeError as error:
            raise typer.BadParameter(f"not JSON: {error}", param_hint="--payload") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--payload")
    from rich.console import Console

    from app.settings import get_settings

    base = (api or get_settings().api_base_url).rstrip("/")
    client_key = key if key is not None else get_settings().conveyor_key.get_secret_value()
    if not client_key:
        raise typer.BadParameter(
            "an API key with enqueue and read is needed: --key or CONVEYOR_KEY", param_hint="--key"
        )
    summary = asyncio.run(run(base, task, body, jobs, rate, concurrency, timeout, client_key))
    Console().print(render(summary))
    raise typer.Exit(summary.exit_code)


def register(cli: typer.Typer) -> None:
    cli.command()(loadtest)
