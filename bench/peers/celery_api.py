"""The usual way: a FastAPI endpoint that calls Celery's `.delay()` (amqp broker) and answers 202.

The endpoint is a plain `def`, so FastAPI runs the blocking publish in its thread pool, as
FastAPI's documentation advises for blocking calls. BENCH_CELERY_ENDPOINT=async makes it an
`async def` that publishes on the event loop instead.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Response, status

from peers._api_models import JobAccepted, JobRequest
from peers.celery_noop import noop

app = FastAPI(title="celery .delay()")


def _accept(request: JobRequest, response: Response) -> JobAccepted:
    result = noop.delay(**request.payload)
    status_url = f"/api/v1/jobs/{result.id}"
    response.headers["Location"] = status_url
    return JobAccepted(id=result.id, task=request.task, state="queued", status_url=status_url)


if os.environ.get("BENCH_CELERY_ENDPOINT", "sync") == "async":

    @app.post("/api/v1/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
    async def enqueue_async(request: JobRequest, response: Response) -> JobAccepted:
        return _accept(request, response)

else:

    @app.post("/api/v1/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
    def enqueue(request: JobRequest, response: Response) -> JobAccepted:
        return _accept(request, response)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}
