"""The Swagger page in a real browser: it draws the API from this host alone, and its
Content-Security-Policy refuses nothing it needs (a refusal is a console error)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import BrowserErrors
from tests.browser.test_dashboard_browser import sign_in
from tests.support.infra import Infra
from tests.support.keys import make_key
from tests.support.stack import Stack

pytestmark = pytest.mark.browser


@pytest.fixture
def api_only(clean_ledger: Infra, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(workdir=tmp_path, env=dict(os.environ))
    try:
        running.start_api()
        running.wait_api()
        yield running
    finally:
        running.stop()


def test_a_signed_in_reader_sees_the_swagger_page_drawn_from_this_host_alone(
    api_only: Stack, page: Page, browser_errors: BrowserErrors, screenshots: Path
) -> None:
    requested: list[str] = []

    def on_request(request: Request) -> None:
        if not request.url.startswith("data:"):
            requested.append(request.url)

    page.on("request", on_request)
    sign_in(page, api_only, make_key(["read"]))
    page.goto(f"{api_only.base_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Conveyor")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(page.get_by_text("/api/v1/jobs", exact=True).first).to_be_visible()
    page.screenshot(path=str(screenshots / "api-docs.png"), full_page=False)
    assert f"{api_only.base_url}/openapi.json" in requested
    assert [url for url in requested if not url.startswith(api_only.base_url)] == []
    assert browser_errors == [], "a script error, or something the policy refused"
