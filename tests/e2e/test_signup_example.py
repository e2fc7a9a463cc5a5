"""The example app (examples/signup): a committed signup sends one welcome email; a signup rolled
back by a unique violation leaves no job and sends nothing."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg

from tests.support.infra import Infra
from tests.support.smtp import SmtpServer
from tests.support.stack import Stack


def welcome_jobs(infra: Infra, address: str) -> list[str]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT id::text FROM jobs WHERE payload->>'to' = %s", (address,)).fetchall()
    return [row[0] for row in rows]


def test_a_committed_signup_sends_one_welcome_and_a_rolled_back_one_none(
    stack: Stack, infra: Infra, smtp_server: SmtpServer
) -> None:
    from examples.signup.app import app, engine

    async def sign_up_twice() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://signups.test") as client:
                body = {"email": "ada.signup@example.com", "name": "Ada"}
                return await client.post("/signups", json=body), await client.post("/signups", json=body)

    try:
        first, again = asyncio.run(sign_up_twice())
    finally:
        asyncio.run(engine.dispose())
    assert first.status_code == 201, first.text
    assert again.status_code == 409, again.text
    job_id = first.json()["welcome_job"]
    assert stack.wait_for([job_id])[job_id]["state"] == "succeeded"
    assert welcome_jobs(infra, "ada.signup@example.com") == [job_id], "the rolled-back signup made no job"
    time.sleep(1)
    assert len(smtp_server.handler.to("ada.signup@example.com")) == 1
