"""The OpenAPI document reads well: every operation and every schema has a name chosen by hand.

Clients are generated from (or written against) these names: an `operationId` FastAPI made up
from the function and the path (`get_job_api_v1_jobs__job_id__get`), or a schema titled after a
route (`Response List Tasks Api V1 Tasks Get`), changes whenever the code around it does.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from app.asgi import create_app

OPERATION_ID = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# What FastAPI names by itself: bodies (`Body_enqueue_api_v1_jobs_post`), answers of bare lists
# and dicts (titled "Response …"), its own validation error, and models split in two.
AUTO_SCHEMA_NAME = re.compile(
    r"^Body_|^Response |ApiV1|Api_V1|_api_v1_|__|-Input$|-Output$|^(HTTP)?ValidationError$"
)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app().openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield f"{method.upper()} {path}", operation


def titles(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("title"), str):
            yield node["title"]
        for value in node.values():
            yield from titles(value)
    elif isinstance(node, list):
        for value in node:
            yield from titles(value)


def test_no_operation_id_is_the_one_fastapi_makes_up(document: dict[str, Any]) -> None:
    # FastAPI's own: the function's name, then the path and the method with \W as `_`.
    made_up = {
        where: operation["operationId"]
        for where, operation in operations(document)
        if operation.get("operationId", "").endswith(
            re.sub(r"\W", "_", where.split(" ")[1]) + "_" + where.split(" ")[0].lower()
        )
    }
    assert made_up == {}


def test_every_operation_has_a_unique_snake_case_operation_id(document: dict[str, Any]) -> None:
    ids = {where: operation.get("operationId", "") for where, operation in operations(document)}
    assert {where: i for where, i in ids.items() if not OPERATION_ID.match(i)} == {}
    assert [i for i, count in Counter(ids.values()).items() if count > 1] == []
    assert "get_job" in ids.values()
    assert ids["POST /api/v1/jobs"] == "enqueue_job"


def test_no_component_schema_has_a_name_fastapi_made_up(document: dict[str, Any]) -> None:
    names = list(document["components"]["schemas"])
    assert "JobView" in names
    assert [name for name in names if AUTO_SCHEMA_NAME.search(name)] == []


def test_no_answer_or_body_is_an_untitled_inline_schema(document: dict[str, Any]) -> None:
    assert [title for title in titles(document) if AUTO_SCHEMA_NAME.search(title)] == []
    for where, operation in operations(document):
        for status, answer in operation["responses"].items():
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            if schema is not None and status.startswith("2"):
                assert "$ref" in schema, f"{where} {status}: {schema}"


def test_each_tasks_documented_job_body_has_every_field_the_api_accepts(document: dict[str, Any]) -> None:
    from app.api.schemas import JobRequest

    body = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]]
    assert "EchoJob" in names
    for name in names:
        assert set(document["components"]["schemas"][name]["properties"]) == set(JobRequest.model_fields), (
            name
        )


@pytest.mark.parametrize(
    ("operation", "thing", "others"),
    [
        ("POST /api/v1/jobs", "job", ("batch", "workflow")),
        ("POST /api/v1/jobs/batch", "batch", ("workflow",)),
        ("POST /api/v1/workflows", "workflow", ("batch",)),
    ],
)
def test_the_idempotency_key_header_says_what_a_repeat_of_its_own_route_answers(
    document: dict[str, Any], operation: str, thing: str, others: tuple[str, ...]
) -> None:
    found = dict(operations(document))[operation]
    [header] = [p for p in found["parameters"] if p["name"] == "Idempotency-Key"]
    description = header["description"]
    assert f"the same {thing}" in description, description
    assert f"first {thing}" in description, description
    for other in others:
        assert f"same {other}" not in description, description
