"""Pure pieces of accepting and reading jobs: idempotency fingerprints and list cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from app.jobs.enqueue import fingerprint
from app.operate.reads import decode_cursor, encode_cursor


def test_a_fingerprint_ignores_key_order_but_not_values_delay_or_priority() -> None:
    a = fingerprint("t", '{"x": 1, "y": 2}', 0, 0)
    assert a == fingerprint("t", '{"y": 2, "x": 1}', 0, 0)
    assert a != fingerprint("t", '{"x": 1, "y": 3}', 0, 0)
    assert a != fingerprint("other", '{"x": 1, "y": 2}', 0, 0)
    assert a != fingerprint("t", '{"x": 1, "y": 2}', 5, 0)
    assert a != fingerprint("t", '{"x": 1, "y": 2}', 0, 5)


def test_a_fingerprint_names_the_job_not_the_door_it_came_through() -> None:
    # An integral delay from the CLI (int) and from a JSON body (int or float) is one request.
    assert fingerprint("t", "{}", 5, 0) == fingerprint("t", "{}", 5.0, 0)


def test_a_cursor_names_the_row_it_was_made_from() -> None:
    created, job_id = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(created, job_id)) == (created, job_id)


@pytest.mark.parametrize("cursor", ["", "nonsense", "bm9waXBl"])
def test_a_cursor_the_api_did_not_hand_out_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (any ValueError subclass is the contract)
        decode_cursor(cursor)
