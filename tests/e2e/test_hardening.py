"""The real processes under bad input and stalls: one client's NUL fails nobody else; a frozen
relay turns readiness red; clean stops log no error."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import orjson
import psycopg

from tests.support.infra import Infra
from tests.support.keys import auth
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"
ERROR_LEVELS = {"error", "critical"}


def count_rows(infra: Infra) -> int:
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


async def post_all(base_url: str, bodies: list[dict[str, object]], connections: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30, headers=auth()) as client:
        return await asyncio.gather(*(client.post("/api/v1/jobs", json=body) for body in bodies))


def test_four_hundred_concurrent_posts_with_one_in_ten_holding_a_nul_fail_only_those(
    stack: Stack, infra: Infra
) -> None:
    bodies: list[dict[str, object]] = [
        {"task": ECHO, "payload": {"message": f"a\u0000b {i}" if i % 10 == 0 else f"fine {i}"}}
        for i in range(400)
    ]
    responses = asyncio.run(post_all(stack.base_url, bodies, connections=32))
    with_nul = [r.status_code for i, r in enumerate(responses) if i % 10 == 0]
    valid = [r.status_code for i, r in enumerate(responses) if i % 10 != 0]
    assert with_nul == [422] * 40
    assert valid == [202] * 360
    assert all(
        r.json()["detail"][0]["loc"] == ["body", "payload", "message"]
        for i, r in enumerate(responses)
        if i % 10 == 0
    )
    assert count_rows(infra) == 360


def ready(stack: Stack) -> tuple[int, dict[str, object]]:
    with stack.client() as client:
        response = client.get("/health/ready")
    return response.status_code, orjson.loads(response.content)


def test_a_frozen_relay_turns_readiness_503_naming_the_relay_and_back_once_thawed(stack: Stack) -> None:
    assert ready(stack)[0] == 200
    relay = stack.processes["relay"]
    relay.signal_group(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        status, body = ready(stack)
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.25)
            status, body = ready(stack)
        assert status == 503
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["relay"]["ok"] is False
        assert "no relay sent a heartbeat" in checks["relay"]["reason"]
        assert checks["worker"]["ok"] is True
    finally:
        relay.signal_group(signal.SIGCONT)
    deadline = time.monotonic() + 30
    while ready(stack)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert ready(stack)[0] == 200


def test_a_clean_stop_of_the_worker_and_the_relay_logs_no_error(stack: Stack) -> None:
    job_id = stack.post_job(ECHO, {"message": "one before the stop"})
    stack.wait_for([job_id])
    for name in ("worker", "relay"):
        assert stack.processes[name].stop() == 0
        lines = [
            orjson.loads(line) for line in stack.processes[name].log().splitlines() if line.startswith("{")
        ]
        assert lines, f"{name} logged nothing"
        errors = [line for line in lines if line.get("level") in ERROR_LEVELS]
        assert errors == [], f"{name} logged errors on a clean stop: {errors}"
        assert any("stopped" in str(line.get("event")) for line in lines)
