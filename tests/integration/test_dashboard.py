"""The dashboard in process, on the real ledger: its pages show the ledger, its buttons change it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support import broker
from tests.support.infra import Infra
from tests.support.keys import full_key

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"
SAME_ORIGIN = {"Origin": BASE}
ECHO = "app.tasks.example.echo"
FLAKY = "app.tasks.example.flaky"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def dashboard(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        await sign_in(client, full_key())
        yield client
    await dispose_async_engines()


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Sign in through the form, as a person would; the client keeps the session cookie."""
    response = await client.post(
        "/dashboard/login", data={"key": key, "next": "/dashboard"}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303, response.text
    return response


@pytest.fixture
def ledger(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        yield conn


def add_job(
    conn: psycopg.Connection[Any],
    *,
    task: str = ECHO,
    state: str = "queued",
    age: timedelta = timedelta(minutes=1),
    finished_ago: timedelta | None = None,
    **columns: Any,
) -> str:
    """One job as the pipeline would have left it in `state`; its id."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "task": task,
        "queue": "default",
        "payload": Jsonb({"message": "hello"}),
        "state": state,
        "max_attempts": 5,
        "created_at": now - age,
        "finished_at": now - finished_ago if finished_ago is not None else None,
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(f"%({name})s" for name in values)
    conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", values)
    return str(values["id"])


def add_attempt(conn: psycopg.Connection[Any], job_id: str, run: int, attempt: int, **columns: Any) -> None:
    values = {"job_id": job_id, "run": run, "attempt": attempt, **columns}
    names = ", ".join(values)
    marks = ", ".join(f"%({name})s" for name in values)
    conn.execute(f"INSERT INTO job_attempts ({names}) VALUES ({marks})", values)


def state_of(conn: psycopg.Connection[Any], job_id: str) -> str | None:
    row = conn.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def listed(html: str) -> list[str]:
    """The job ids of the rows of a jobs or dead-letters table, top to bottom."""
    return re.findall(r'<tr data-job="([0-9a-f-]{36})"', html)


def card(html: str, attribute: str, value: str) -> str:
    """The text of the card value carrying attribute=value, tags stripped."""
    match = re.search(rf'{attribute}="{re.escape(value)}">(.*?)</span>', html, re.S)
    assert match, f"no {attribute}={value} in the page"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


async def test_the_overview_shows_jobs_per_state_the_backlog_workers_and_queues(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    for _ in range(3):
        add_job(ledger, state="queued", age=timedelta(minutes=30))
    add_job(ledger, state="running", progress=42, started_at=datetime.now(UTC))
    for _ in range(2):
        add_job(ledger, state="dead", finished_ago=timedelta(minutes=3), attempts=5)
    ledger.execute(
        "INSERT INTO workers (id, host, pid, queues, in_flight, processed) "
        "VALUES ('worker-on-host-a', 'host-a', 4242, '[\"default\"]', 1, 1234)"
    )
    response = await dashboard.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert card(html, "data-state", "queued") == "3"
    assert card(html, "data-state", "running") == "1"
    assert card(html, "data-state", "dead") == "2"
    assert card(html, "data-state", "succeeded") == "0"
    assert card(html, "data-vital", "backlog") == "3", "queued and never published"
    assert card(html, "data-vital", "oldest") == "30m ago"
    assert card(html, "data-vital", "workers") == "1 live"
    assert "worker-on-host-a" in html
    assert "1,234" in html
    assert '<progress value="42" max="100">' in html, "a running job shows its progress bar"
    for queue in ("default", "email", "exports"):
        assert f'data-queue="{queue}"' in html


async def test_the_overview_fragment_is_what_htmx_polls_every_two_seconds(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    page = (await dashboard.get("/dashboard")).text
    assert 'hx-get="/dashboard/fragments/overview" hx-trigger="every 2s, refresh"' in page
    add_job(ledger, state="retrying")
    fragment = await dashboard.get("/dashboard/fragments/overview")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="overview"')
    assert "<html" not in fragment.text
    assert card(fragment.text, "data-state", "retrying") == "1"


async def test_the_chart_counts_the_jobs_finished_per_minute_in_the_last_hour(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    five_minutes_ago = datetime.now(UTC).replace(second=30) - timedelta(minutes=5)
    for _ in range(3):
        add_job(ledger, state="succeeded", finished_at=five_minutes_ago)
    add_job(ledger, state="dead", finished_ago=timedelta(minutes=2))
    add_job(ledger, state="succeeded", finished_ago=timedelta(hours=2), age=timedelta(hours=3))
    html = (await dashboard.get("/dashboard")).text
    assert "succeeded 3</li>" in html
    assert "dead 1</li>" in html
    assert len(re.findall(r'<rect class="bar state-succeeded"', html)) == 1
    assert re.search(r"<title>\d\d:\d\d UTC · 3 succeeded</title>", html)
    assert "4 this hour" in html


async def test_closed_minutes_of_the_chart_are_read_once_and_forgotten_on_request(
    clean_ledger: Infra, ledger: psycopg.Connection[Any]
) -> None:
    from app.dashboard.throughput import MinuteCounts
    from app.ledger.engines import async_engine, dispose_async_engines

    add_job(ledger, state="succeeded", finished_ago=timedelta(minutes=10))
    counts = MinuteCounts()
    try:
        async with async_engine().connect() as conn:
            now = datetime.now(UTC)
            first = sum(row.jobs for row in await counts.last_hour(conn, now))
            add_job(ledger, state="succeeded", finished_ago=timedelta(minutes=10))
            add_job(ledger, state="succeeded", finished_ago=timedelta(seconds=1))
            second = sum(row.jobs for row in await counts.last_hour(conn, now + timedelta(seconds=2)))
            counts.forget()
            third = sum(row.jobs for row in await counts.last_hour(conn, now + timedelta(seconds=2)))
    finally:
        await dispose_async_engines()
    assert first == 1
    assert second == 2, "the closed minute came from memory; the open one was read again"
    assert third == 3


async def test_the_jobs_list_filters_by_state_and_by_task(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    dead_echo = add_job(ledger, task=ECHO, state="dead", finished_ago=timedelta(minutes=1))
    dead_flaky = add_job(ledger, task=FLAKY, state="dead", finished_ago=timedelta(minutes=1))
    queued_flaky = add_job(ledger, task=FLAKY, state="queued")
    everything = listed((await dashboard.get("/dashboard/jobs")).text)
    assert set(everything) == {dead_echo, dead_flaky, queued_flaky}
    assert set(listed((await dashboard.get("/dashboard/jobs?state=dead")).text)) == {dead_echo, dead_flaky}
    assert set(listed((await dashboard.get(f"/dashboard/jobs?task={FLAKY}")).text)) == {
        dead_flaky,
        queued_flaky,
    }
    both = await dashboard.get(f"/dashboard/fragments/jobs?state=dead&task={FLAKY}")
    assert listed(both.text) == [dead_flaky]
    assert f'hx-get="/dashboard/fragments/jobs?state=dead&amp;task={FLAKY}"' in both.text
    assert (await dashboard.get("/dashboard/jobs?state=sleeping")).status_code == 400


async def test_the_jobs_list_pages_newest_first_with_a_cursor(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    ids = [add_job(ledger, age=timedelta(seconds=120 - i)) for i in range(120)]
    newest_first = list(reversed(ids))
    seen: list[str] = []
    url: str | None = "/dashboard/jobs"
    pages = 0
    while url:
        html = (await dashboard.get(url)).text
        seen += listed(html)
        pages += 1
        older = re.search(r'<a class="btn" href="([^"]+)" rel="next">', html)
        url = older.group(1).replace("&amp;", "&") if older else None
    assert pages == 3
    assert seen == newest_first
    assert (await dashboard.get("/dashboard/jobs?cursor=not-a-cursor")).status_code == 400


async def test_the_job_page_shows_payload_result_error_and_every_attempt(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    job_id = add_job(
        ledger,
        task=FLAKY,
        state="succeeded",
        run=2,
        attempts=1,
        payload=Jsonb({"fail_times": 5}),
        result=Jsonb({"attempts": 6}),
        finished_ago=timedelta(seconds=5),
    )
    now = datetime.now(UTC)
    for attempt in (1, 2):
        add_attempt(
            ledger,
            job_id,
            1,
            attempt,
            worker_id="worker-a",
            outcome="retrying",
            error=f"TransientError: flaky: failure {attempt} of 5",
            started_at=now - timedelta(seconds=60 - attempt),
            finished_at=now - timedelta(seconds=59 - attempt),
        )
    add_attempt(
        ledger,
        job_id,
        2,
        1,
        worker_id="worker-b",
        outcome="succeeded",
        started_at=now - timedelta(seconds=6),
        finished_at=now - timedelta(seconds=5),
        duration_seconds=0.25,
    )
    response = await dashboard.get(f"/dashboard/jobs/{job_id}")
    assert response.status_code == 200
    html = response.text
    assert "&#34;fail_times&#34;: 5" in html
    assert "&#34;attempts&#34;: 6" in html
    assert html.count("TransientError: flaky: failure") == 2
    assert "worker-a" in html
    assert "worker-b" in html
    assert re.search(
        r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">\d+s ago</time>', html
    )
    assert "(run 2, replayed 1 time)" in html
    assert "hx-trigger" not in html.split('id="job"')[1].split(">")[0], "a finished job stops polling"
    assert "/replay" not in html, "no button that cannot apply"
    assert "/cancel" not in html


async def test_the_job_page_shows_a_unique_key_as_it_was_given_and_nothing_for_a_job_without_one(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    keyed = add_job(ledger, unique_key="of:0a1b2c:key:acme")
    plain = add_job(ledger)
    page = (await dashboard.get(f"/dashboard/jobs/{keyed}")).text
    assert re.search(r"data-unique-key>acme<", page)
    assert "data-unique-key" not in (await dashboard.get(f"/dashboard/jobs/{plain}")).text


async def test_an_unknown_job_has_a_404_page(dashboard: httpx.AsyncClient) -> None:
    response = await dashboard.get(f"/dashboard/jobs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "No such job" in response.text


async def test_replay_on_a_dead_jobs_page_queues_it_again_and_says_so(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    job_id = add_job(ledger, state="dead", attempts=5, finished_ago=timedelta(minutes=1))
    page = (await dashboard.get(f"/dashboard/jobs/{job_id}")).text
    assert f'action="/dashboard/jobs/{job_id}/replay"' in page
    response = await dashboard.post(
        f"/dashboard/jobs/{job_id}/replay", data={"next": f"/dashboard/jobs/{job_id}"}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/jobs/{job_id}"
    row = ledger.execute("SELECT state, run, attempts FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == ("queued", 2, 0)
    after = await dashboard.get(response.headers["location"])
    assert "Replayed 1 job" in after.text
    assert "Replayed" not in (await dashboard.get(f"/dashboard/jobs/{job_id}")).text, "a notice shows once"


async def test_cancel_stops_a_queued_job_asks_a_running_one_and_is_refused_for_a_finished_one(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    queued = add_job(ledger, state="queued")
    running = add_job(ledger, state="running")
    finished = add_job(ledger, state="succeeded")
    assert f'/dashboard/jobs/{queued}/cancel"' in (await dashboard.get(f"/dashboard/jobs/{queued}")).text
    running_page = (await dashboard.get(f"/dashboard/jobs/{running}")).text
    assert f'/dashboard/jobs/{running}/cancel"' in running_page
    assert "data-cancel-requested" not in running_page
    done = await dashboard.post(
        f"/dashboard/jobs/{queued}/cancel", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert state_of(ledger, queued) == "cancelled"
    assert "Cancelled the job" in done.text
    asked = await dashboard.post(
        f"/dashboard/jobs/{running}/cancel", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert state_of(ledger, running) == "running", "its worker ends it"
    assert "Asked the worker to stop the job" in asked.text
    assert "data-cancel-requested" in asked.text
    refused = await dashboard.post(
        f"/dashboard/jobs/{finished}/cancel", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert state_of(ledger, finished) == "succeeded"
    assert "Nothing done: the job is succeeded now" in refused.text


async def test_discarding_one_dead_job_deletes_it_and_its_history_only(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    doomed = add_job(ledger, state="dead", finished_ago=timedelta(minutes=1))
    kept = add_job(ledger, state="dead", finished_ago=timedelta(minutes=1))
    add_attempt(ledger, doomed, 1, 1, outcome="dead")
    page = (await dashboard.get("/dashboard/dead")).text
    assert set(listed(page)) == {doomed, kept}
    response = await dashboard.post(
        f"/dashboard/jobs/{doomed}/discard", data={"next": "/dashboard/dead"}, headers=SAME_ORIGIN
    )
    assert (response.status_code, response.headers["location"]) == (303, "/dashboard/dead")
    assert state_of(ledger, doomed) is None
    assert state_of(ledger, kept) == "dead"
    history = ledger.execute("SELECT count(*) FROM job_attempts WHERE job_id = %s", (doomed,)).fetchone()
    assert history == (0,)
    after = (await dashboard.get("/dashboard/dead")).text
    assert listed(after) == [kept]
    assert "Discarded 1 dead job" in after


async def test_bulk_replay_by_task_replays_that_tasks_dead_jobs_after_a_confirmation(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    flaky = [add_job(ledger, task=FLAKY, state="dead", finished_ago=timedelta(minutes=1)) for _ in range(3)]
    echo = add_job(ledger, task=ECHO, state="dead", finished_ago=timedelta(minutes=1))
    dead_page = (await dashboard.get("/dashboard/dead")).text
    assert f'href="/dashboard/dead/confirm?action=replay&amp;task={FLAKY}"' in dead_page
    confirm = await dashboard.get(f"/dashboard/dead/confirm?action=replay&task={FLAKY}")
    assert "Replay 3 dead jobs of" in confirm.text
    assert [state_of(ledger, job) for job in flaky] == ["dead"] * 3, "asking is not doing"
    response = await dashboard.post(
        "/dashboard/dead/bulk",
        data={"action": "replay", "task": FLAKY, "confirm": "yes", "next": "/dashboard/dead"},
        headers=SAME_ORIGIN,
        follow_redirects=True,
    )
    assert "Replayed 3 jobs" in response.text
    assert [state_of(ledger, job) for job in flaky] == ["queued"] * 3
    assert state_of(ledger, echo) == "dead"
    assert listed(response.text) == [echo]


def relay_pass(infra: Infra) -> int:
    """What the relay does every few seconds: remove the stale dead-letter copies recorded."""
    from app.ledger.engines import sync_engine
    from app.relay import deadletters

    return deadletters.clean(sync_engine(), infra.broker_url)


def dead_letter_copies(infra: Infra, job_ids: list[str]) -> None:
    """Put a copy of each job's message in default.XQ, as RabbitMQ does when a job dies."""
    from dramatiq import Message

    from app.worker import broker as dramatiq_broker

    dramatiq_broker.declare_queue("default", ensure=True)
    for job_id in job_ids:
        message = Message(
            queue_name="default", actor_name=ECHO, args=(), kwargs={}, options={"job_id": str(job_id)}
        )
        broker.publish_raw(infra, "default.XQ", message.encode())


async def test_bulk_discard_of_every_dead_job_needs_confirm_and_spares_the_living(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any], clean_ledger: Infra
) -> None:
    # Dead with their copies out in default.XQ (published), as the relay leaves them.
    dead = [
        add_job(ledger, task=task, state="dead", published_at=datetime.now(UTC))
        for task in (ECHO, FLAKY, ECHO)
    ]
    alive = add_job(ledger, state="succeeded", finished_ago=timedelta(minutes=1))
    dead_letter_copies(clean_ledger, [*dead, alive])
    unconfirmed = await dashboard.post(
        "/dashboard/dead/bulk", data={"action": "discard", "task": ""}, headers=SAME_ORIGIN
    )
    assert unconfirmed.status_code == 400
    assert [state_of(ledger, job) for job in dead] == ["dead"] * 3
    confirm = await dashboard.get("/dashboard/dead/confirm?action=discard")
    assert "Discard 3 dead jobs?" in confirm.text
    response = await dashboard.post(
        "/dashboard/dead/bulk",
        data={"action": "discard", "task": "", "confirm": "yes"},
        headers=SAME_ORIGIN,
    )
    assert (response.status_code, response.headers["location"]) == (303, "/dashboard/dead")
    assert [state_of(ledger, job) for job in dead] == [None] * 3
    assert state_of(ledger, alive) == "succeeded"
    assert relay_pass(clean_ledger) == 3, "the relay's next pass takes the discarded jobs' copies out"
    assert broker.depth(clean_ledger, "default.XQ") == 1, "the living job's copy stays"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no origin at all"),
        pytest.param({"Origin": "https://evil.example"}, id="another origin"),
        pytest.param({"Origin": "null"}, id="an opaque origin"),
        pytest.param({"Referer": "http://evil.example/page"}, id="another referrer"),
        pytest.param({"Origin": BASE, "Sec-Fetch-Site": "cross-site"}, id="a cross-site fetch"),
    ],
)
async def test_an_action_that_does_not_come_from_the_dashboard_is_refused(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any], headers: dict[str, str]
) -> None:
    job_id = add_job(ledger, state="dead")
    replay = await dashboard.post(f"/dashboard/jobs/{job_id}/replay", headers=headers)
    bulk = await dashboard.post(
        "/dashboard/dead/bulk", data={"action": "discard", "confirm": "yes"}, headers=headers
    )
    assert (replay.status_code, bulk.status_code) == (403, 403)
    assert state_of(ledger, job_id) == "dead"


async def test_an_action_from_an_old_browser_that_sends_only_a_same_host_referrer_is_accepted(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    job_id = add_job(ledger, state="dead")
    response = await dashboard.post(
        f"/dashboard/jobs/{job_id}/replay", headers={"Referer": f"{BASE}/dashboard/dead"}
    )
    assert response.status_code == 303
    assert state_of(ledger, job_id) == "queued"


async def test_a_redirect_target_outside_the_dashboard_is_ignored(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    job_id = add_job(ledger, state="queued")
    response = await dashboard.post(
        f"/dashboard/jobs/{job_id}/cancel", data={"next": "https://evil.example/x"}, headers=SAME_ORIGIN
    )
    assert response.headers["location"] == f"/dashboard/jobs/{job_id}"


async def test_pages_forbid_framing_and_foreign_scripts(dashboard: httpx.AsyncClient) -> None:
    response = await dashboard.get("/dashboard")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"


async def test_htmx_is_served_from_the_dashboard_itself_with_its_license(
    dashboard: httpx.AsyncClient,
) -> None:
    htmx = await dashboard.get("/dashboard/static/htmx.min.js")
    assert htmx.status_code == 200
    assert htmx.text.startswith("/*! htmx 2.")
    assert "Zero-Clause BSD" in htmx.text[:600]
    assert "max-age" in htmx.headers["cache-control"]
    assert (await dashboard.get("/dashboard/static/dashboard.css")).status_code == 200
    assert (await dashboard.get("/dashboard/static/..%2Fpages.py")).status_code == 404


async def test_counts_above_the_cap_are_estimates_and_below_it_exact(
    clean_ledger: Infra, ledger: psycopg.Connection[Any]
) -> None:
    from app.ledger.engines import async_engine, dispose_async_engines
    from app.operate.stats import counts_by_state

    for _ in range(8):
        add_job(ledger, state="succeeded")
    add_job(ledger, state="dead")
    try:
        async with async_engine().connect() as conn:
            counts = await counts_by_state(conn, exact_up_to=5)
    finally:
        await dispose_async_engines()
    assert (counts["dead"].count, counts["dead"].exact) == (1, True)
    assert (counts["queued"].count, counts["queued"].exact) == (0, True)
    assert counts["succeeded"].exact is False
    assert counts["succeeded"].count >= 6


def add_schedule(conn: psycopg.Connection[Any], name: str, *, paused: bool = False, **columns: Any) -> None:
    values: dict[str, Any] = {
        "name": name,
        "task": ECHO,
        "queue": "default",
        "payload": Jsonb({"message": "tick"}),
        "max_attempts": 5,
        "every_seconds": 60,
        "paused": paused,
        "next_run_at": datetime.now(UTC) + timedelta(seconds=30),
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(f"%({name})s" for name in values)
    conn.execute(f"INSERT INTO schedules ({names}) VALUES ({marks})", values)


async def test_the_schedules_page_shows_each_schedules_next_and_last_run_status_and_jobs(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    tick = datetime.now(UTC) - timedelta(minutes=1)
    add_schedule(ledger, "minutely", last_run_at=tick)
    add_schedule(
        ledger, "nightly", paused=True, every_seconds=None, cron="0 3 * * *", timezone="Europe/Paris"
    )
    made = add_job(
        ledger, state="succeeded", schedule="minutely", scheduled_for=tick, finished_ago=timedelta(0)
    )
    add_job(ledger, state="queued")
    html = (await dashboard.get("/dashboard/schedules")).text
    rows = dict(re.findall(r'<tr data-schedule="([^"]+)">(.*?)</tr>', html, re.S))
    assert sorted(rows) == ["minutely", "nightly"]
    assert "every 60s" in rows["minutely"]
    assert "in 2" in rows["minutely"] or "in 3" in rows["minutely"], "next run in about 30 s"
    assert "1m ago" in rows["minutely"], "the last run"
    assert f"/dashboard/jobs/{made}" in rows["minutely"], "the jobs it made"
    assert 'class="badge ok">active' in rows["minutely"]
    assert "cron 0 3 * * * (Europe/Paris)" in rows["nightly"]
    assert 'class="badge muted-badge">paused' in rows["nightly"]
    assert "none yet" in rows["nightly"]
    fragment = await dashboard.get("/dashboard/fragments/schedules")
    assert fragment.status_code == 200
    assert 'data-schedule="minutely"' in fragment.text
    assert (await dashboard.get("/dashboard/schedules?cursor=%21%21")).status_code == 400


async def test_an_operator_pauses_and_resumes_a_schedule_from_its_row(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    add_schedule(ledger, "minutely")
    rows = dict(
        re.findall(
            r'<tr data-schedule="([^"]+)">(.*?)</tr>',
            (await dashboard.get("/dashboard/schedules")).text,
            re.S,
        )
    )
    assert 'action="/dashboard/schedules/minutely/pause"' in rows["minutely"]
    paused = await dashboard.post(
        "/dashboard/schedules/minutely/pause", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert "Paused the schedule" in paused.text
    assert ledger.execute("SELECT paused FROM schedules WHERE name = 'minutely'").fetchone() == (True,)
    assert 'action="/dashboard/schedules/minutely/resume"' in paused.text
    resumed = await dashboard.post(
        "/dashboard/schedules/minutely/resume", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert "Resumed the schedule" in resumed.text
    paused_now, next_run_at = ledger.execute(
        "SELECT paused, next_run_at FROM schedules WHERE name = 'minutely'"
    ).fetchone()
    assert paused_now is False
    assert next_run_at > datetime.now(UTC), "from its next tick: the ticks missed while paused never fire"
    gone = await dashboard.post(
        "/dashboard/schedules/nothing/pause", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert "there is no such schedule" in gone.text
    foreign = await dashboard.post(
        "/dashboard/schedules/minutely/pause", headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert ledger.execute("SELECT paused FROM schedules WHERE name = 'minutely'").fetchone() == (False,)


async def test_the_jobs_page_filters_by_schedule_and_a_job_names_its_schedule(
    dashboard: httpx.AsyncClient, ledger: psycopg.Connection[Any]
) -> None:
    tick = datetime.now(UTC) - timedelta(minutes=5)
    made = [add_job(ledger, schedule="minutely", scheduled_for=tick + timedelta(minutes=n)) for n in range(3)]
    other = add_job(ledger)
    page = (await dashboard.get("/dashboard/jobs?schedule=minutely")).text
    assert sorted(listed(page)) == sorted(made)
    assert other not in listed(page)
    assert "of schedule" in page
    assert "schedule=minutely" in (await dashboard.get("/dashboard/fragments/jobs?schedule=minutely")).text
    job = (await dashboard.get(f"/dashboard/jobs/{made[0]}")).text
    assert 'href="/dashboard/jobs?schedule=minutely"' in job
