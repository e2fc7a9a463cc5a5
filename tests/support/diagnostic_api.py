"""The API as the fault suite runs it: the diagnostics tasks accepted over HTTP.

Conveyor never accepts them over HTTP (`public=False`: one ends its worker on purpose). The
fault suite posts them anyway, because what it measures is the HTTP path under outages (every
202 reaches a terminal state, every refusal is honest) together with the effects those tasks
count. So it serves the same application with those tasks marked public in its own registry:
only this file, which no image ships, does that.

`python -m tests.support.diagnostic_api --host H --port P` serves it as `conveyor api` does.
"""

from __future__ import annotations

import argparse
import dataclasses

from fastapi import FastAPI


def create_app() -> FastAPI:
    import app.tasks.diagnostics  # registers them whatever DIAGNOSTIC_TASKS says
    from app.asgi import create_app as conveyor_app
    from app.jobs import registry

    for name, spec in list(registry._registry.items()):
        if name.startswith(app.tasks.diagnostics.__name__ + "."):
            registry._registry[name] = dataclasses.replace(spec, public=True)
    return conveyor_app()


def main() -> None:
    import uvicorn

    from app.logs import configure_logging

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    configure_logging()
    uvicorn.run(
        f"{__name__}:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
