"""Pure pieces of the job service: request fingerprints and list cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from app.services.jobs import decode_cursor, encode_cursor, request_fingerprint


def test_a_fingerprint_ignores_key_order_but_not_values_or_route() -> None:
    a = request_fingerprint("/api/v1/jobs", {"task": "t", "payload": {"x": 1, "y": 2}})
    b = request_fingerprint("/api/v1/jobs", {"payload": {"y": 2, "x": 1}, "task": "t"})
    assert a == b
    assert a != request_fingerprint("/api/v1/jobs", {"task": "t", "payload": {"x": 1, "y": 3}})
    assert a != request_fingerprint("/api/v1/emails", {"task": "t", "payload": {"x": 1, "y": 2}})


def test_a_cursor_names_the_row_it_was_made_from() -> None:
    created, job_id = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(created, job_id)) == (created, job_id)


@pytest.mark.parametrize("cursor", ["", "nonsense", "bm9waXBl"])
def test_a_cursor_the_api_did_not_hand_out_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (any ValueError subclass is the contract)
        decode_cursor(cursor)
