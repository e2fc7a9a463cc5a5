"""Readiness and `conveyor health` against the real database and broker, and hung stand-ins for them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from app.cli.commands import cli
from app.operate import health
from app.settings import Settings, get_settings
from tests.integration.conftest import bearer
from tests.support.infra import Infra, free_port
from tests.support.keys import make_key, revoke_key
from tests.support.seed import declare_queues, insert_relay, insert_worker


@pytest.fixture
def ready_infra(clean_ledger: Infra) -> Iterator[Infra]:
    """Queues declared as a worker declares them; no worker yet; nothing cached from before."""
    declare_queues()
    health.forget_probes()
    yield clean_ledger
    health.forget_probes()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word: a hung dependency."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Change settings through the environment for one test."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def conveyor_health(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["health", *args])
    return result.exit_code, result.stdout, result.stderr


# -- /health/ready --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ready_answers_200_when_database_broker_queues_a_live_worker_and_relay_are_there(
    ready_infra: Infra, api: httpx.AsyncClient
) -> None:
    insert_worker(ready_infra, host="somewhere")
    insert_relay(ready_infra, host="elsewhere")
    response = await api.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "broker": True,
        "worker": True,
        "relay": True,
    }
    assert body["checks"]["worker"]["live"] == 1
    assert set(body["checks"]["broker"]["queues"]) == {"default", "email", "exports"}


@pytest.mark.anyio
async def test_ready_answers_503_naming_the_relay_when_no_relay_beats(
    ready_infra: Infra, api: httpx.AsyncClient
) -> None:
    insert_worker(ready_infra, host="somewhere")
    insert_relay(ready_infra, host="elsewhere", seconds_ago=60)
    insert_relay(ready_infra, host="elsewhere", stopped=True)
    response = await api.get("/health/ready")
    assert response.status_code == 503
    relay = response.json()["checks"]["relay"]
    assert relay["ok"] is False
    assert relay["reason"].startswith("no relay sent a heartbeat in the last")


@pytest.mark.anyio
async def test_ready_answers_503_naming_the_worker_check_when_no_worker_sent_a_recent_heartbeat(
    ready_infra: Infra, api: httpx.AsyncClient
) -> None:
    insert_worker(ready_infra, host="old", seconds_ago=3600)
    insert_worker(ready_infra, host="gone", stopped=True)
    response = await api.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    worker = body["checks"]["worker"]
    assert worker["ok"] is False
    assert "no worker sent a heartbeat in the last" in worker["reason"]


def only_ok(body: dict[str, object]) -> bool:
    """Whether a readiness answer says `ok`/`fail` per check and nothing more."""
    checks = body["checks"]
    assert isinstance(checks, dict)
    return set(body) == {"status", "checks"} and all(set(check) == {"ok"} for check in checks.values())


@pytest.mark.anyio
async def test_ready_without_a_key_says_only_ok_or_fail_per_check_with_the_same_status(
    ready_infra: Infra, anonymous: httpx.AsyncClient
) -> None:
    response = await anonymous.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {
        "status": "fail",
        "checks": {
            "database": {"ok": True},
            "broker": {"ok": True},
            "worker": {"ok": False},
            "relay": {"ok": False},
        },
    }, "no reason, no migration, no queue names or depths"
    insert_worker(ready_infra, host="somewhere")
    insert_relay(ready_infra, host="elsewhere")
    response = await anonymous.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert only_ok(response.json())
    assert "www-authenticate" not in response.headers


@pytest.mark.anyio
async def test_ready_with_a_key_of_any_scope_gives_every_detail(
    ready_infra: Infra, anonymous: httpx.AsyncClient
) -> None:
    insert_worker(ready_infra, host="somewhere")
    for scope in ("metrics", "enqueue", "read", "operate"):
        response = await anonymous.get("/health/ready", headers=bearer(make_key([scope])))
        assert response.status_code == 503, "no relay"
        checks = response.json()["checks"]
        assert checks["database"]["migration"], scope
        assert set(checks["broker"]["queues"]) == {"default", "email", "exports"}
        assert checks["worker"]["live"] == 1
        assert checks["relay"]["reason"].startswith("no relay sent a heartbeat")


@pytest.mark.anyio
async def test_ready_with_a_bad_key_answers_as_without_one_never_401(
    ready_infra: Infra, anonymous: httpx.AsyncClient
) -> None:
    revoked = make_key(["read"], name="revoked-for-health")
    revoke_key("revoked-for-health")
    for headers in (
        bearer("cvk_0123456789ab_" + "x" * 43),
        bearer(revoked),
        bearer("not a key"),
        {"authorization": "Basic abc"},
        {"cookie": "conveyor_session=forged"},
    ):
        response = await anonymous.get("/health/ready", headers=headers)
        assert response.status_code == 503, (headers, response.text)
        assert only_ok(response.json()), headers
        assert "www-authenticate" not in response.headers


@pytest.mark.anyio
async def test_live_answers_200_whatever_the_dependencies(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health/live")).json() == {"status": "ok"}


# -- the checks, bounded --------------------------------------------------------------------


def test_the_broker_check_names_the_queues_that_are_not_declared(ready_infra: Infra) -> None:
    check = health.check_broker(queues=["default", "never-declared"])
    assert check.ok is False
    assert check.reason == "queues not declared yet: never-declared"


def test_an_unreachable_broker_fails_the_check_at_once_with_the_reason(infra: Infra) -> None:
    settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    started = time.monotonic()
    check = health.check_broker(settings, ["default"])
    assert check.ok is False
    assert check.reason is not None
    assert check.reason.startswith("broker unreachable")
    assert time.monotonic() - started < 2


def test_a_hung_broker_fails_the_check_within_its_timeout_instead_of_hanging_the_probe(
    silent_port: int,
) -> None:
    settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{silent_port}/")
    started = time.monotonic()
    check = health.check_broker(settings, ["default"], timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert check == health.Check(False, "broker did not answer within 0.5s")


def test_a_hung_database_fails_the_check_within_its_timeout(silent_port: int) -> None:
    settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{silent_port}/conveyor")
    started = time.monotonic()
    check = health.check_database(settings, timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert check == health.Check(False, "database did not answer within 0.5s")


def test_a_probe_keeps_its_outcome_for_its_ttl_and_concurrent_callers_share_one_run() -> None:
    calls: list[float] = []

    def slow() -> int:
        calls.append(time.monotonic())
        time.sleep(0.2)
        return len(calls)

    probe = health.Probe(slow, ttl=0.5)
    outcomes: list[int] = []
    callers = [threading.Thread(target=lambda: outcomes.append(probe.get())) for _ in range(5)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert outcomes == [1] * 5
    assert probe.get() == 1  # still fresh
    time.sleep(0.6)
    assert probe.get() == 2
    assert len(calls) == 2


def test_a_probe_whose_run_fails_raises_the_failure_to_its_callers() -> None:
    def broken() -> int:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        health.Probe(broken).get()


# -- conveyor health ------------------------------------------------------------------------


def test_health_of_the_database_and_the_broker_exits_0(ready_infra: Infra) -> None:
    assert conveyor_health("--component", "db")[:2] == (0, "healthy: database\n")
    assert conveyor_health("--component", "broker")[:2] == (0, "healthy: broker (3 queues)\n")


def test_health_of_the_worker_needs_a_live_worker_on_this_very_host(ready_infra: Infra) -> None:
    insert_worker(ready_infra, host="another-host")
    code, _, err = conveyor_health("--component", "worker")
    assert code == 1
    assert err == (
        f"unhealthy: worker: no worker on host {socket.gethostname()} sent a heartbeat in the last 1.5s\n"
    )
    insert_worker(ready_infra, host=socket.gethostname())
    assert conveyor_health("--component", "worker")[:2] == (0, "healthy: worker (1 live)\n")


def test_health_without_a_component_checks_all_four_and_names_what_failed(ready_infra: Infra) -> None:
    code, out, err = conveyor_health()
    assert (code, out) == (1, "")
    assert err.startswith("unhealthy: worker: no worker sent a heartbeat")
    assert "; relay: no relay sent a heartbeat" in err
    insert_worker(ready_infra, host="anywhere")
    insert_relay(ready_infra, host="anywhere")
    expected = "healthy: database, broker (3 queues), worker (1 live), relay (1 live)\n"
    assert conveyor_health() == (0, expected, "")


def test_health_of_the_relay_component_asks_for_a_live_relay_on_this_host(ready_infra: Infra) -> None:
    insert_relay(ready_infra, host="another-host")
    code, _, err = conveyor_health("--component", "relay")
    assert code == 1
    assert err.startswith(f"unhealthy: relay: no relay on host {socket.gethostname()} sent a heartbeat")
    insert_relay(ready_infra, host=socket.gethostname())
    assert conveyor_health("--component", "relay")[:2] == (0, "healthy: relay (1 live)\n")


def test_health_of_an_api_that_does_not_answer_exits_1_with_its_url(
    infra: Infra, settings_env: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings_env.setenv("API_BASE_URL", url)
    code, _, err = conveyor_health("--component", "api")
    assert code == 1
    assert err.startswith(f"unhealthy: api: {url}/health/live unreachable")


def test_health_of_an_unknown_component_is_a_usage_error() -> None:
    assert conveyor_health("--component", "kettle")[0] == 2
