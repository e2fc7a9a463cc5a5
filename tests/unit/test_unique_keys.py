"""The unique key a job is stored with: namespaced by its policy, shown as it was given."""

from __future__ import annotations

import pytest

from app.jobs import registry
from app.jobs.context import JobContext
from app.jobs.enqueue import shown_unique_key, stored_unique_key
from app.jobs.registry import Payload, task
from app.tasks.example import SyncAccountPayload, export_jobs, sync_account


class Numbered(Payload):
    number: int | None = None
    text: str = ""


def test_a_field_value_and_the_enqueue_option_are_stored_in_their_own_namespace() -> None:
    acme = SyncAccountPayload(account="acme")
    assert stored_unique_key(sync_account, acme, None, None) == "key:acme"
    assert stored_unique_key(sync_account, acme, "client-1", "given") == "of:client-1:key:given"
    assert stored_unique_key(sync_account, acme, "client-1", None) == "of:client-1:key:acme"
    assert stored_unique_key(export_jobs, export_jobs.payload_model(), "client-1", None) == "client:client-1"
    assert stored_unique_key(export_jobs, export_jobs.payload_model(), None, None) is None


def test_a_value_too_long_for_an_index_row_is_held_by_its_digest() -> None:
    long = SyncAccountPayload.model_construct(account="a" * 300, seconds=0.0)
    key = stored_unique_key(sync_account, long, None, None)
    assert key is not None
    assert key.startswith("sha256:")
    assert len(key) == len("sha256:") + 64


def test_the_view_shows_the_key_without_its_namespace() -> None:
    assert shown_unique_key("key:acme") == "acme"
    assert shown_unique_key("client:abc") == "client:abc"
    assert shown_unique_key("of:c1:key:acme") == "acme"
    assert shown_unique_key("of:c1:key:of:c2:key:x") == "of:c2:key:x"
    assert shown_unique_key("of:c1:sha256:ab") == "sha256:ab"
    assert shown_unique_key(None) is None


def numbered(payload: Numbered, job: JobContext) -> None:
    """A task for these specs alone."""


def test_a_field_that_is_not_a_json_string_is_keyed_by_its_json_and_a_null_one_is_not_unique() -> None:
    spec = task(Numbered, public=False, unique_key="number")(numbered)
    registry._registry.pop(spec.name)  # registered for this spec alone
    assert stored_unique_key(spec, Numbered(number=42), None, None) == "key:42"
    assert stored_unique_key(spec, Numbered(), None, None) is None


def test_a_task_declaring_an_unknown_field_or_both_policies_fails_at_import() -> None:
    with pytest.raises(ValueError, match="not a field"):
        task(Numbered, unique_key="missing")(numbered)
    with pytest.raises(ValueError, match="either"):
        task(Numbered, unique_key="text", one_per_client=True)(numbered)


@pytest.mark.parametrize("given", ["", "k" * 256, "nul\x00"])
def test_an_enqueue_option_that_cannot_be_a_key_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="unique_key"):
        stored_unique_key(sync_account, SyncAccountPayload(account="a"), None, given)
