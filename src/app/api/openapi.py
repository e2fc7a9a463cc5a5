"""The OpenAPI document, made exact where FastAPI cannot see the contract by itself.

`POST /api/v1/jobs` reads its body by hand (the hot path skips FastAPI's dependency solving),
and its payload depends on the task it names. The document says so: the body is one of the
public tasks, each with its payload model, discriminated by `task`. Clients (and generated
tests) then know every task's payload exactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from app.access.keys import Scope
from app.api import docs
from app.api.auth import require
from app.api.schemas import JobRequest
from app.jobs.enqueue import MAX_DELAY_SECONDS
from app.jobs.registry import MAX_PRIORITY, TaskSpec, public_tasks
from app.settings import get_settings

REF_TEMPLATE = "#/components/schemas/{model}"
JOBS_PATH = "/api/v1/jobs"
OPENAPI_URL = "/openapi.json"
# Who may call each open route: anyone (`[]`), or anyone with a key optional (`[{}, bearer]`:
# readiness gives its details to a key's holder only).
OPEN_PATHS: dict[str, list[dict[str, list[str]]]] = {
    "/health/live": [],
    "/health/ready": [{}, {"bearer": []}],
}
BATCH_PATH = "/api/v1/jobs/batch"
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key (`cvk_…`): `conveyor keys create NAME --scopes enqueue,read,…`",
}
READERS = require(Scope.READ)
# As `JobRequest` (which validates the body) declares it.
UNIQUE_KEY = JobRequest.model_fields["unique_key"]


def _job_model(spec: TaskSpec[Any]) -> type[BaseModel]:
    payload_required = any(field.is_required() for field in spec.payload_model.model_fields.values())
    payload: Any = (spec.payload_model, ...) if payload_required else (spec.payload_model, None)
    return create_model(
        f"{spec.payload_model.__name__.removesuffix('Payload')}Job",
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__=f"A job of {spec.name}: {spec.description}",
        task=(Literal[spec.name], ...),  # type: ignore[arg-type]
        payload=payload,
        delay_seconds=(int, Field(default=0, ge=0, le=MAX_DELAY_SECONDS)),
        priority=(int, Field(default=0, ge=0, le=MAX_PRIORITY, description="0 (default) to 9 (first)")),
        unique_key=(str | None, UNIQUE_KEY),
    )


def job_request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The body of `POST /api/v1/jobs` as one JSON schema, and the definitions it refers to."""
    models = tuple(_job_model(spec) for spec in sorted(public_tasks(), key=lambda s: s.name))
    union: Any = Annotated[Union[models], Field(discriminator="task")]  # noqa: UP007
    schema = RootModel[union].model_json_schema(ref_template=REF_TEMPLATE)
    definitions = schema.pop("$defs", {})
    schema.pop("title", None)
    return schema, definitions


def batch_schema(job: dict[str, Any]) -> dict[str, Any]:
    """The body of `POST /api/v1/jobs/batch`: 1 to MAX_BATCH_JOBS bodies of `POST /api/v1/jobs`."""
    limit = get_settings().max_batch_jobs
    jobs = {"type": "array", "items": job, "minItems": 1, "maxItems": limit}
    return {
        "type": "object",
        "properties": {"jobs": jobs},
        "required": ["jobs"],
        "additionalProperties": False,
        "title": "JobBatchRequest",
    }


def install(application: FastAPI, *, serve_docs: bool) -> None:
    """The document with the per-task job bodies and the bearer scheme; `/openapi.json` and
    `/docs` for `read` (a Bearer key, or the dashboard's sign-in), when `serve_docs`."""

    def openapi() -> dict[str, Any]:
        if application.openapi_schema is None:
            document = get_openapi(
                title=application.title,
                version=application.version,
                summary=application.summary,
                routes=application.routes,
            )
            body, definitions = job_request_schema()
            components = document.setdefault("components", {})
            components.setdefault("schemas", {}).update(definitions)
            components["securitySchemes"] = {"bearer": BEARER}
            document["security"] = [{"bearer": []}]
            for path, security in OPEN_PATHS.items():
                for operation in document["paths"].get(path, {}).values():
                    operation["security"] = security
            content = document["paths"][JOBS_PATH]["post"]["requestBody"]["content"]
            content["application/json"]["schema"] = body
            content = document["paths"][BATCH_PATH]["post"]["requestBody"]["content"]
            content["application/json"]["schema"] = batch_schema(body)
            application.openapi_schema = document
        return application.openapi_schema

    application.openapi = openapi  # type: ignore[method-assign]
    if not serve_docs:
        return

    @application.get(OPENAPI_URL, include_in_schema=False, dependencies=[Depends(READERS)])
    async def openapi_document() -> JSONResponse:
        return JSONResponse(application.openapi())

    docs.install(application, f"{application.title} API", OPENAPI_URL)
