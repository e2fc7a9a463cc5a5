"""The audit log through the API and the dashboard: every operator action is written with the key
that did it, the request id and the address; a refused action writes nothing; reading the log
takes `operate`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support.infra import Infra
from tests.support.keys import auth, make_key
from tests.support.seed import insert_job

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"
SAME_ORIGIN = {"origin": BASE}
FLAKY = "app.tasks.example.flaky"


@pytest.fixture
def log(clean_ledger: Infra) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """The audit log, emptied for the test; reads rows as dicts."""
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("TRUNCATE audit_log")
        yield conn


@pytest.fixture
async def app_client(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    """The whole application in this process, with no key by default; keeps cookies."""
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client
    await dispose_async_engines()


def entries(log: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every entry, oldest first, without its id and time."""
    rows = log.execute("SELECT * FROM audit_log ORDER BY id").fetchall()
    return [{k: v for k, v in row.items() if k not in {"id", "at"}} for row in rows]


def actions_of(log: psycopg.Connection[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(e["key_name"], e["action"], e["target"]) for e in entries(log)]


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    response = await client.post(
        "/dashboard/login", data={"key": key, "next": "/dashboard"}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303, response.text
    return response


async def post_form(client: httpx.AsyncClient, path: str, **fields: str) -> httpx.Response:
    response = await client.post(path, data={"next": "/dashboard", **fields}, headers=SAME_ORIGIN)
    assert response.status_code == 303, response.text
    return response


# -- the API --------------------------------------------------------------------------------


async def test_an_api_replay_is_recorded_with_the_key_name_the_request_id_and_the_address(
    app_client: httpx.AsyncClient, clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    key = make_key(["operate"], name="ops-replayer")
    dead = insert_job(clean_ledger, state="dead")
    response = await app_client.post(
        f"/api/v1/jobs/{dead}/replay", headers={**auth(key), "x-request-id": "replay-123"}
    )
    assert response.status_code == 202, response.text
    [entry] = entries(log)
    assert entry["key_name"] == "ops-replayer"
    assert entry["key_id"] == key.split("_")[1]
    assert (entry["action"], entry["target"]) == ("job.replay", str(dead))
    assert entry["request_id"] == "replay-123" == response.headers["x-request-id"]
    assert entry["client_address"] == "127.0.0.1"


async def test_a_refused_action_writes_no_entry(
    app_client: httpx.AsyncClient, clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    queued = insert_job(clean_ledger, state="queued")
    done = insert_job(clean_ledger, state="succeeded")
    headers = auth(make_key(["operate"]))
    assert (await app_client.post(f"/api/v1/jobs/{queued}/replay", headers=headers)).status_code == 409
    assert (await app_client.post(f"/api/v1/jobs/{done}/cancel", headers=headers)).status_code == 409
    assert (await app_client.post("/api/v1/schedules/nobody/pause", headers=headers)).status_code == 404
    assert (await app_client.delete("/api/v1/schedules/nobody", headers=headers)).status_code == 404
    assert entries(log) == []


async def test_cancel_and_every_schedule_change_through_the_api_are_recorded(
    app_client: httpx.AsyncClient, clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    headers = auth(make_key(["operate"], name="ops-api"))
    queued = insert_job(clean_ledger, state="queued")
    running = insert_job(clean_ledger, state="running")
    assert (await app_client.post(f"/api/v1/jobs/{queued}/cancel", headers=headers)).status_code == 200
    assert (await app_client.post(f"/api/v1/jobs/{running}/cancel", headers=headers)).status_code == 202
    body = {
        "name": "nightly",
        "task": "app.tasks.example.echo",
        "payload": {"message": "x"},
        "cron": "0 3 * * *",
    }
    assert (await app_client.post("/api/v1/schedules", json=body, headers=headers)).status_code == 201
    for verb in ("pause", "resume"):
        assert (
            await app_client.post(f"/api/v1/schedules/nightly/{verb}", headers=headers)
        ).status_code == 200
    assert (await app_client.delete("/api/v1/schedules/nightly", headers=headers)).status_code == 204
    assert actions_of(log) == [
        ("ops-api", "job.cancel", str(queued)),
        ("ops-api", "job.cancel", str(running)),
        ("ops-api", "schedule.create", "nightly"),
        ("ops-api", "schedule.pause", "nightly"),
        ("ops-api", "schedule.resume", "nightly"),
        ("ops-api", "schedule.delete", "nightly"),
    ]
    assert [e["detail"] for e in entries(log)[:2]] == [None, {"running": True}]
    created = entries(log)[2]["detail"]
    assert created == {
        "task": "app.tasks.example.echo",
        "cron": "0 3 * * *",
        "every_seconds": None,
        "timezone": "UTC",
    }


async def test_reading_the_audit_log_needs_the_operate_scope(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/api/v1/audit")).status_code == 401
    for scopes in (["read"], ["enqueue"], ["read", "enqueue", "metrics"]):
        response = await app_client.get("/api/v1/audit", headers=auth(make_key(scopes)))
        assert response.status_code == 403, scopes
    assert (await app_client.get("/api/v1/audit", headers=auth(make_key(["operate"])))).status_code == 200


async def test_the_audit_log_pages_newest_first_with_a_cursor_and_filters_by_action_and_key(
    app_client: httpx.AsyncClient, log: psycopg.Connection[dict[str, Any]]
) -> None:
    for n in range(7):
        log.execute(
            "INSERT INTO audit_log (key_name, action, target) VALUES (%s, %s, %s)",
            ("alice" if n % 2 else "bob", "job.replay" if n < 4 else "job.cancel", f"t{n}"),
        )
    headers = auth(make_key(["operate"]))
    seen: list[str] = []
    cursor = ""
    for _ in range(3):
        page = (await app_client.get(f"/api/v1/audit?limit=3&cursor={cursor}", headers=headers)).json()
        seen += [item["target"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"t{n}" for n in range(6, -1, -1)]
    assert cursor is None
    replays = (await app_client.get("/api/v1/audit?action=job.replay", headers=headers)).json()
    assert [i["target"] for i in replays["items"]] == ["t3", "t2", "t1", "t0"]
    alices = (await app_client.get("/api/v1/audit?key=alice&action=job.replay", headers=headers)).json()
    assert [i["target"] for i in alices["items"]] == ["t3", "t1"]
    assert alices["next_cursor"] is None
    item = alices["items"][0]
    fields = "id at key_name key_id action target count request_id client_address detail"
    assert set(item) == set(fields.split())
    too_big = "9" * 20
    for bad in ("limit=0", "limit=201", "cursor=abc", "cursor=-1", f"cursor={too_big}", "cursor=%C2%B2"):
        assert (await app_client.get(f"/api/v1/audit?{bad}", headers=headers)).status_code == 422, bad


async def test_the_audit_route_is_in_the_openapi_document_with_its_operation_id(
    app_client: httpx.AsyncClient,
) -> None:
    document = (await app_client.get("/openapi.json", headers=auth())).json()
    operation = document["paths"]["/api/v1/audit"]["get"]
    assert operation["operationId"] == "list_audit"
    assert {"action", "key", "limit", "cursor"} <= {p["name"] for p in operation["parameters"]}
    assert {"200", "401", "403", "422"} <= set(operation["responses"])


# -- the dashboard --------------------------------------------------------------------------


async def test_every_dashboard_action_is_recorded_with_the_signed_in_key(
    app_client: httpx.AsyncClient, clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    await sign_in(app_client, make_key(["read", "operate"], name="dash-ops"))
    replayed, discarded = insert_job(clean_ledger), insert_job(clean_ledger)
    queued = insert_job(clean_ledger, state="queued")
    running = insert_job(clean_ledger, state="running")
    flaky = [insert_job(clean_ledger, task=FLAKY, payload={"fail_times": 1}) for _ in range(3)]
    log.execute(
        "INSERT INTO schedules (name, task, queue, payload, max_attempts, every_seconds, next_run_at)"
        " VALUES ('tick', 'app.tasks.example.echo', 'default', '{\"message\": \"x\"}', 3, 60, now())"
    )
    await post_form(app_client, f"/dashboard/jobs/{replayed}/replay")
    await post_form(app_client, f"/dashboard/jobs/{discarded}/discard")
    await post_form(app_client, f"/dashboard/jobs/{queued}/cancel")
    await post_form(app_client, f"/dashboard/jobs/{running}/cancel")
    await post_form(app_client, "/dashboard/dead/bulk", action="discard", task=FLAKY, confirm="yes")
    await post_form(app_client, "/dashboard/schedules/tick/pause")
    await post_form(app_client, "/dashboard/schedules/tick/resume")
    assert actions_of(log) == [
        ("dash-ops", "session.sign_in", None),
        ("dash-ops", "job.replay", str(replayed)),
        ("dash-ops", "job.discard", str(discarded)),
        ("dash-ops", "job.cancel", str(queued)),
        ("dash-ops", "job.cancel", str(running)),
        ("dash-ops", "dead.discard_all", None),
        ("dash-ops", "schedule.pause", "tick"),
        ("dash-ops", "schedule.resume", "tick"),
    ]
    assert [e["detail"] for e in entries(log)[3:5]] == [None, {"running": True}]
    bulk = entries(log)[5]
    assert (bulk["count"], bulk["detail"]) == (len(flaky), {"task": FLAKY})
    assert all(e["request_id"] and e["client_address"] == "127.0.0.1" for e in entries(log))


async def test_a_refused_dashboard_action_writes_no_entry(
    app_client: httpx.AsyncClient, clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    queued = insert_job(clean_ledger, state="queued")
    await sign_in(app_client, make_key(["read", "operate"]))
    log.execute("TRUNCATE audit_log")
    await post_form(app_client, f"/dashboard/jobs/{queued}/replay")
    await post_form(app_client, "/dashboard/schedules/nobody/pause")
    assert entries(log) == []
    other_site = {"origin": "https://evil.example"}
    refused = await app_client.post(f"/dashboard/jobs/{queued}/cancel", data={}, headers=other_site)
    assert refused.status_code == 403
    assert entries(log) == []


async def test_signing_in_and_out_is_recorded_and_a_sign_out_without_a_session_records_nothing(
    app_client: httpx.AsyncClient, log: psycopg.Connection[dict[str, Any]]
) -> None:
    await sign_in(app_client, make_key(["read"], name="looker"))
    assert (await app_client.post("/dashboard/logout", headers=SAME_ORIGIN)).status_code == 303
    app_client.cookies.clear()
    assert (await app_client.post("/dashboard/logout", headers=SAME_ORIGIN)).status_code == 303
    assert actions_of(log) == [("looker", "session.sign_in", None), ("looker", "session.sign_out", None)]
    refused = await app_client.post(
        "/dashboard/login", data={"key": "cvk_0123456789ab_" + "y" * 43}, headers=SAME_ORIGIN
    )
    assert refused.status_code == 401
    assert len(entries(log)) == 2


async def test_the_audit_page_shows_the_log_to_operate_keys_and_refuses_read_keys(
    app_client: httpx.AsyncClient, clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]]
) -> None:
    await sign_in(app_client, make_key(["read"], name="reader"))
    assert (await app_client.get("/dashboard/audit")).status_code == 403
    assert 'href="/dashboard/audit"' not in (await app_client.get("/dashboard")).text
    await app_client.post("/dashboard/logout", headers=SAME_ORIGIN)

    await sign_in(app_client, make_key(["read", "operate"], name="auditor"))
    dead = insert_job(clean_ledger)
    await post_form(app_client, f"/dashboard/jobs/{dead}/replay")
    page = await app_client.get("/dashboard/audit")
    assert page.status_code == 200
    assert 'href="/dashboard/audit" aria-current="page"' in page.text
    for shown in (str(dead), "job.replay", "auditor"):
        assert shown in page.text
    assert "<script>" not in page.text, "no inline script (the CSP refuses them)"
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    replays = await app_client.get("/dashboard/audit?action=job.replay")
    assert len(re.findall(r'<tr data-entry="\d+"', replays.text)) == 1
    by_reader = await app_client.get("/dashboard/audit?key=reader")
    actions = re.findall(r'href="/dashboard/audit\?action=([a-z_.]+)"', by_reader.text)
    assert actions == ["session.sign_out", "session.sign_in"]


async def test_the_audit_page_pages_older_entries_behind_a_cursor(
    app_client: httpx.AsyncClient, log: psycopg.Connection[dict[str, Any]]
) -> None:
    await sign_in(app_client, make_key(["read", "operate"]))
    log.execute(
        "INSERT INTO audit_log (key_name, action, target) SELECT 'bulk', 'job.cancel', 'n' || n"
        " FROM generate_series(1, 60) AS n"
    )
    first = await app_client.get("/dashboard/audit?action=job.cancel")
    assert len(re.findall(r'<tr data-entry="\d+"', first.text)) == 50
    older = re.search(r'href="/dashboard/audit(\?[^"]*cursor=\d+[^"]*)" rel="next"', first.text)
    assert older, "an Older link"
    second = await app_client.get("/dashboard/audit" + older.group(1).replace("&amp;", "&"))
    assert len(re.findall(r'<tr data-entry="\d+"', second.text)) == 10
    assert 'rel="next"' not in second.text
    assert (await app_client.get("/dashboard/audit?cursor=nope")).status_code == 400


async def test_a_bulk_action_cut_short_records_what_its_committed_batches_did(
    clean_ledger: Infra, log: psycopg.Connection[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ledger import jobs as ledger
    from app.ledger.engines import async_engine, dispose_async_engines
    from app.operate import actions
    from app.operate.audit import Actor

    for _ in range(5):
        insert_job(clean_ledger)
    monkeypatch.setattr(actions, "BATCH", 2)
    real = ledger.discard_dead
    calls = 0

    async def fails_on_the_third_batch(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("the database went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(ledger, "discard_dead", fails_on_the_third_batch)
    try:
        with pytest.raises(ConnectionError):
            await actions.bulk(
                async_engine(), "discard", up_to=100, actor=Actor("k1", "ops-bulk", "r1", "10.0.0.1")
            )
    finally:
        await dispose_async_engines()
    [entry] = entries(log)
    assert (entry["key_name"], entry["action"], entry["count"]) == ("ops-bulk", "dead.discard_all", 4)
    assert entry["detail"] == {"task": None, "cut_short": "ConnectionError"}
