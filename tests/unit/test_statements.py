"""The ledger's statements as they are sent: the text the server needs, short enough for
psycopg to keep its parse of the placeholders instead of parsing it at every execution."""

from __future__ import annotations

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from app.ledger import queries

# What a worker runs for every burst of jobs, and the relay for every take.
HOT = (
    "CLAIM",
    "LOCK_FLOW_KEYS",
    "CLAIM_LIMITED",
    "SUCCEED",
    "RETRY",
    "BURY",
    "RENEW_LEASES",
    "UNCLAIM",
    "TAKE_PUBLISHABLE",
)


def test_the_statements_of_every_job_fit_psycopgs_parse_cache() -> None:
    too_long = {name: len(getattr(queries, name).encode()) for name in HOT}
    assert {n: size for n, size in too_long.items() if size > MAX_CACHED_STATEMENT_LENGTH} == {}


def test_comments_and_indentation_are_not_sent_but_a_dash_pair_in_a_literal_is() -> None:
    loaded = queries.load(
        "-- name: one\n-- what it does\nSELECT 1, -- the first\n    '--x' AS y -- why\n  -- aside\nFROM t\n"
    )
    assert loaded == {"one": "SELECT 1,\n'--x' AS y\nFROM t"}


def test_a_statement_written_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="written twice"):
        queries.load("-- name: one\nSELECT 1\n-- name: one\nSELECT 2\n")
