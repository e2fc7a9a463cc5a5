"""The dashboard in a real browser against the real processes (api, relay, worker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.browser.conftest import BrowserErrors
from tests.support.keys import full_key, make_key
from tests.support.stack import Stack

pytestmark = pytest.mark.browser

FLAKY = "app.tasks.example.flaky"
ECHO = "app.tasks.example.echo"
SLEEP = "app.tasks.example.sleep"


def sign_in(page: Page, stack: Stack, key: str, start: str = "/dashboard") -> None:
    """As a person does: open a page, land on the sign-in form, paste the key."""
    page.goto(f"{stack.base_url}{start}")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{stack.base_url}{start}")


def test_signing_in_a_wrong_key_stays_a_read_key_looks_and_an_operate_key_acts(
    stack: Stack, page: Page, browser_errors: BrowserErrors
) -> None:
    job_id = stack.post_job(FLAKY, {"fail_times": 1, "permanent": True})
    stack.wait_for([job_id], states={"dead"})
    job_page = f"/dashboard/jobs/{job_id}"

    page.goto(f"{stack.base_url}{job_page}")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    page.get_by_label("API key").fill("cvk_0123456789ab_" + "z" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown API key")
    expect(page.get_by_label("API key")).to_be_visible()

    page.get_by_label("API key").fill(make_key(["read"]))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{stack.base_url}{job_page}")
    expect(page.locator("#job")).to_have_attribute("data-state", "dead")
    expect(page.get_by_role("button", name="Replay")).to_have_count(0)
    expect(page.get_by_text("read only")).to_be_visible()
    forged = page.request.post(
        f"{stack.base_url}{job_page}/replay", form={"next": job_page}, headers={"origin": stack.base_url}
    )
    assert forged.status == 403
    assert stack.job(job_id)["state"] == "dead"

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{stack.base_url}/dashboard/login")
    sign_in(page, stack, make_key(["read", "operate"]), start=job_page)
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Replayed 1 job"))
    assert stack.job(job_id)["run"] == 2
    # The wrong key's sign-in was answered 401 (the page says so too); nothing else failed.
    assert [error for error in browser_errors if "401" not in error] == []
    assert sum("401" in error for error in browser_errors) == 1


def test_an_operator_sees_a_dead_job_replays_it_and_watches_it_succeed(
    stack: Stack, page: Page, browser_errors: BrowserErrors
) -> None:
    # flaky counts attempts over every run: it fails its 5 attempts, and its replay succeeds.
    job_id = stack.post_job(FLAKY, {"fail_times": 5})
    stack.wait_for([job_id], states={"dead"})

    sign_in(page, stack, full_key())
    expect(page.locator('[data-state="dead"]')).to_have_text("1")
    page.get_by_role("link", name=re.compile("^dead")).click()

    expect(page).to_have_url(f"{stack.base_url}/dashboard/dead")
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_contain_text("flaky: failure 5 of 5")
    expect(row).to_contain_text("5/5")
    row.get_by_role("button", name="Replay").click()

    expect(page.get_by_role("status")).to_have_text(re.compile("Replayed 1 job"))
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)

    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Jobs").click()
    listed = page.locator(f'tr[data-job="{job_id}"]')
    expect(listed.locator(".badge")).to_have_text("succeeded", timeout=30_000)

    listed.get_by_role("link").click()
    expect(page.locator("#job")).to_have_attribute("data-state", "succeeded")
    expect(page.locator(".attempts tbody tr")).to_have_count(6)
    expect(page.locator(".attempts tbody tr").last).to_contain_text("succeeded")
    expect(page.get_by_text("(run 2, replayed 1 time)")).to_be_visible()
    assert stack.job(job_id)["state"] == "succeeded"
    assert browser_errors == []


def test_every_page_renders_live_without_script_errors(
    stack: Stack, page: Page, browser_errors: BrowserErrors, screenshots: Path
) -> None:
    running = stack.post_job(SLEEP, {"seconds": 10})
    for message in ("hello", "world", "again"):
        stack.post_job(ECHO, {"message": message})
    dead = [stack.post_job(FLAKY, {"fail_times": 5}) for _ in range(2)]
    dead.append(stack.post_job(FLAKY, {"fail_times": 1, "permanent": True}))
    stack.post_job(ECHO, {"message": "later"}, delay_seconds=3600)
    replayed = stack.post_job(FLAKY, {"fail_times": 5})
    stack.wait_for([*dead, replayed], states={"dead"})
    with stack.client() as client:
        assert client.post(f"/api/v1/jobs/{replayed}/replay").status_code == 202
    stack.wait_for([replayed, running], states={"succeeded", "running"})

    sign_in(page, stack, full_key())
    expect(page.locator('[data-vital="workers"]')).to_have_text("1 live")
    expect(page.locator('[data-state="dead"]')).to_have_text("3")
    # The overview polls: the running job's progress rises without a reload.
    bar = page.locator(f'a[href="/dashboard/jobs/{running}"]').locator("xpath=../..").locator("progress")
    expect(bar).to_have_attribute("value", re.compile(r"^[1-9]\d*$"), timeout=10_000)
    assert page.evaluate("typeof window.htmx") == "object"
    page.screenshot(path=str(screenshots / "overview.png"), full_page=True)

    page.goto(f"{stack.base_url}/dashboard/jobs")
    expect(page.locator("tr[data-job]")).to_have_count(9)
    page.screenshot(path=str(screenshots / "jobs.png"), full_page=True)

    page.goto(f"{stack.base_url}/dashboard/jobs/{replayed}")
    expect(page.locator(".attempts tbody tr")).to_have_count(6)
    page.screenshot(path=str(screenshots / "job.png"), full_page=True)

    page.goto(f"{stack.base_url}/dashboard/dead")
    expect(page.locator("tr[data-job]")).to_have_count(3)
    page.screenshot(path=str(screenshots / "dead-letters.png"), full_page=True)

    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator(f'tr[data-job="{dead[2]}"]').get_by_role("button", name="Discard").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Discarded 1 dead job"))
    assert asked == ["Discard this dead job and its history for good?"]
    expect(page.locator("tr[data-job]")).to_have_count(2)

    page.get_by_role("link", name="Replay all…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Replay 2 dead jobs?")
    page.screenshot(path=str(screenshots / "confirm.png"), full_page=True)
    page.get_by_role("button", name="Yes, replay them").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Replayed 2 jobs"))
    stack.wait_for(dead[:2], states={"succeeded"})

    with stack.client() as client:
        for body in (
            {"name": "heartbeat", "every_seconds": 1},
            {"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Paris"},
        ):
            made = client.post(
                "/api/v1/schedules", json={"task": ECHO, "payload": {"message": "tick"}, **body}
            )
            assert made.status_code == 201, made.text
        client.post("/api/v1/schedules/nightly-report/pause")
    page.goto(f"{stack.base_url}/dashboard/schedules")
    expect(page.locator("tr[data-schedule]")).to_have_count(2)
    # The page polls: the heartbeat's jobs appear without a reload.
    expect(page.locator('tr[data-schedule="heartbeat"] .recent a').nth(2)).to_be_visible(timeout=15_000)
    page.screenshot(path=str(screenshots / "schedules.png"), full_page=True)
    assert browser_errors == []


def test_a_signed_out_cookie_set_again_by_hand_opens_nothing(stack: Stack, page: Page) -> None:
    sign_in(page, stack, make_key(["read"]))
    kept = [cookie for cookie in page.context.cookies() if cookie["name"] == "conveyor_session"]
    assert len(kept) == 1
    assert kept[0]["httpOnly"]
    assert kept[0]["sameSite"] == "Strict"

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{stack.base_url}/dashboard/login")
    assert not [cookie for cookie in page.context.cookies() if cookie["name"] == "conveyor_session"]

    # Copied before signing out (or kept by a browser that never dropped it), and set again:
    page.context.add_cookies([{"name": "conveyor_session", "value": kept[0]["value"], "url": stack.base_url}])
    page.goto(f"{stack.base_url}/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    assert page.request.get(f"{stack.base_url}/api/v1/jobs").status == 401


def test_a_workflow_is_drawn_as_its_graph_and_each_box_opens_its_job(
    stack: Stack, page: Page, browser_errors: BrowserErrors, screenshots: Path
) -> None:
    steps = {
        "extract": {"task": ECHO, "payload": {"message": "rows"}},
        "clean": {"task": SLEEP, "payload": {"seconds": 0.2}, "after": ["extract"]},
        "enrich": {"task": FLAKY, "payload": {"fail_times": 1, "permanent": True}, "after": ["extract"]},
        "load": {"task": "app.tasks.example.gather", "payload": {}, "after": ["clean", "enrich"]},
        "report": {"task": SLEEP, "payload": {"seconds": 30}, "after": ["clean"]},
        "notify": {"task": "app.tasks.example.gather", "payload": {}, "after": ["report", "load"]},
    }
    with stack.client() as client:
        made = client.post("/api/v1/workflows", json={"name": "nightly-import", "steps": steps})
    assert made.status_code == 202, made.text
    body = made.json()
    stack.wait_for([body["steps"]["report"]], states={"running"})
    stack.wait_for([body["steps"]["enrich"]], states={"dead"})

    sign_in(page, stack, full_key(), start="/dashboard/workflows")
    expect(page.locator(f'tr[data-workflow="{body["id"]}"]')).to_contain_text("running")
    page.get_by_role("link", name=body["id"][:8]).click()
    graph = page.locator("#workflow-graph")
    expect(graph.locator("a.step")).to_have_count(6)
    expect(graph.locator("path.arrow")).to_have_count(7)
    expect(graph.locator('a.step.state-dead[data-step="enrich"]')).to_have_count(1)
    expect(graph.locator('a.step.state-cancelled[data-step="notify"]')).to_have_count(1)
    expect(graph.locator('a.step.state-running[data-step="report"]')).to_have_count(1)
    page.screenshot(path=str(screenshots / "workflow.png"), full_page=True)
    graph.locator('a.step[data-step="enrich"]').click()
    expect(page).to_have_url(f"{stack.base_url}/dashboard/jobs/{body['steps']['enrich']}")
    expect(page.locator("[data-workflow]")).to_have_attribute("href", f"/dashboard/workflows/{body['id']}")
    assert browser_errors == []
