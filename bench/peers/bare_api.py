"""The ceiling: a FastAPI endpoint that validates the same body as Conveyor and only answers 202."""

from __future__ import annotations

from uuid import uuid4

from fastapi import FastAPI, Response, status

from peers._api_models import JobAccepted, JobRequest

app = FastAPI(title="bare 202")


@app.post("/api/v1/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
async def enqueue(request: JobRequest, response: Response) -> JobAccepted:
    job_id = uuid4()
    status_url = f"/api/v1/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(id=job_id, task=request.task, state="queued", status_url=status_url)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}
