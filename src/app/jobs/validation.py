"""Input the ledger cannot store, refused at the door with the place where it was found.

PostgreSQL stores no NUL character (`\\u0000`) in text or jsonb: a payload, a query string or
a form field that holds one would fail in the database, and, sharing a batch, fail other
clients' requests with it. It is refused before that, as a 422 that names the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.errors import UnstorableInput

NUL = "\x00"
# How a NUL looks in the JSON that pydantic and orjson write: a cheap test before the walk.
ESCAPED_NUL = "\\u0000"

Loc = tuple[str | int, ...]


def storable_text(value: str) -> str:
    """A pydantic/FastAPI validator for a query or form string."""
    if NUL in value:
        raise ValueError("must not contain a NUL character (\\u0000), which cannot be stored")
    return value


def check_payload_json(payload_json: str) -> None:
    """Raise UnstorableInput naming the first string (or key) of the payload holding a NUL."""
    if ESCAPED_NUL not in payload_json:
        return
    import orjson

    for loc in _nul_places(orjson.loads(payload_json), ()):
        raise UnstorableInput(loc)


def check_value(value: Any, loc: Loc = ()) -> None:
    """The same for a value already parsed (a dict from a caller)."""
    for found in _nul_places(value, loc):
        raise UnstorableInput(found)


def _nul_places(value: Any, loc: Loc) -> Iterator[Loc]:
    if isinstance(value, str):
        if NUL in value:
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            if NUL in str(key):
                yield (*loc, str(key))
            yield from _nul_places(item, (*loc, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_places(item, (*loc, index))
