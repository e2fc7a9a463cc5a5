"""The API docs: `/docs` and `/openapi.json` for `read` only, and a Swagger page that loads
nothing from another host and runs no inline script."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from tests.integration.conftest import bearer
from tests.support.keys import make_key

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"


class Page(HTMLParser):
    """Every URL a page loads or links, every inline script body, every inline style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.inline_scripts: list[str] = []
        self.inline_styles: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [value for name, value in attrs if name in {"src", "href", "action"} and value]
        if found.get("style") is not None or tag == "style":
            self.inline_styles.append(tag)
        if any(name.startswith("on") for name in found):
            self.inline_scripts.append(f"<{tag} on…>")
        if tag == "script":
            self.scripts.append(found)
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data.strip()[:80])


async def test_the_docs_and_the_document_need_a_read_key(anonymous: httpx.AsyncClient) -> None:
    for path in ("/docs", "/openapi.json"):
        assert (await anonymous.get(path)).status_code == 401, path
        refused = await anonymous.get(path, headers=bearer(make_key(["metrics"])))
        assert refused.status_code == 403, path
        assert "scope" in refused.json()["detail"]
        assert (await anonymous.get(path, headers=bearer(make_key(["read"])))).status_code == 200, path


async def test_a_dashboard_session_with_read_reads_the_docs(anonymous: httpx.AsyncClient) -> None:
    signed_in = await anonymous.post(
        "/dashboard/login", data={"key": make_key(["read"]), "next": "/docs"}, headers={"origin": BASE}
    )
    assert signed_in.status_code == 303
    assert (await anonymous.get("/docs")).status_code == 200
    assert (await anonymous.get("/openapi.json")).json()["openapi"].startswith("3.")


async def test_the_swagger_page_loads_only_files_of_this_host_under_a_policy_without_inline_script(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.get("/docs", headers=bearer(make_key(["read"])))
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "style-src 'self';" in policy
    assert "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy

    page = Page()
    page.feed(response.text)
    assert page.inline_scripts == [], "the policy would block them: the initializer is a file"
    assert page.inline_styles == []
    assert len(page.scripts) == 2
    assert all(script.get("src") for script in page.scripts)
    assert page.urls, "the page loads Swagger UI's files"
    for url in page.urls:
        assert url.startswith("/"), f"{url} is not on this host"
        assert not url.startswith("//"), f"{url} is not on this host"
    assert "http" not in response.text.lower().replace("http-equiv", ""), "no URL of another host"

    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for url in page.urls:
        asset = await anonymous.get(url)  # public code: no key needed
        assert asset.status_code == 200, url
        kind = next(kind for suffix, kind in kinds.items() if url.split("?")[0].endswith(suffix))
        assert kind in asset.headers["content-type"], url
        assert asset.content, url
    bundle = await anonymous.get("/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content
    initializer = (await anonymous.get("/docs/assets/swagger-init.js")).text
    assert "openapiUrl" in initializer
    assert "validatorUrl: null" in initializer, "the validator badge would load an image from elsewhere"
    assert 'data-openapi-url="/openapi.json"' in response.text


async def test_an_asset_that_is_not_listed_is_404(anonymous: httpx.AsyncClient) -> None:
    for name in ("index.html", "..%2F..%2Fsettings.py", "redoc.standalone.js"):
        assert (await anonymous.get(f"/docs/assets/{name}")).status_code == 404, name
