"""`conveyor health`: one exit code for a container healthcheck, and a one-line reason when unhealthy."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli._common import fail, task_queues

if TYPE_CHECKING:
    from app.operate.health import Check

API_TIMEOUT_SECONDS = 3.0


class Component(StrEnum):
    API = "api"
    WORKER = "worker"
    RELAY = "relay"
    BROKER = "broker"
    DB = "db"


def health(
    component: Annotated[
        Component | None,
        typer.Option(
            help="Check one part: api (GET /health/live), worker or relay (a live one on this "
            "host), broker, db. Default: db, broker, any live worker and any live relay."
        ),
    ] = None,
) -> None:
    """Check health: exit 0 when healthy, 1 with a one-line reason when not (a container healthcheck)."""
    checks = _checks(component)
    failed = [f"{name}: {check.reason}" for name, check in checks.items() if not check.ok]
    if failed:
        fail("unhealthy: " + "; ".join(failed))
    typer.echo("healthy: " + ", ".join(_summary(name, check) for name, check in checks.items()))


def _checks(component: Component | None) -> dict[str, Check]:
    from app.operate import health as probes

    if component is Component.API:
        return {"api": _check_api()}
    if component is Component.WORKER:
        return {"worker": probes.check_workers(host=probes.this_host())}
    if component is Component.RELAY:
        return {"relay": probes.check_relays(host=probes.this_host())}
    if component is Component.DB:
        return {"database": probes.check_database()}
    if component is Component.BROKER:
        return {"broker": probes.check_broker(queues=task_queues())}
    return {
        "database": probes.check_database(),
        "broker": probes.check_broker(queues=task_queues()),
        "worker": probes.check_workers(),
        "relay": probes.check_relays(),
    }


def _check_api() -> Check:
    import httpx

    from app.logs import first_line
    from app.operate.health import Check
    from app.settings import get_settings

    url = f"{get_settings().api_base_url.rstrip('/')}/health/live"
    try:
        response = httpx.get(url, timeout=API_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        return Check(False, f"{url} unreachable: {first_line(error) or type(error).__name__}")
    if response.status_code != 200:
        return Check(False, f"{url} answered {response.status_code}")
    return Check(True, details={"url": url})


def _summary(name: str, check: Check) -> str:
    if "live" in check.details:
        return f"{name} ({check.details['live']} live)"
    if "queues" in check.details:
        return f"{name} ({len(check.details['queues'])} queues)"
    return name
