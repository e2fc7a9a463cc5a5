"""Given a secret and a body, I expect the Conveyor-Signature header to be Stripe's scheme:
`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` keyed with the whole secret; and the URL policy to
name why it refuses an address."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from uuid import UUID

import orjson
import pytest

from app.errors import WebhookTargetRefused
from app.ledger.webhooks import Due
from app.settings import Settings
from app.webhooks import signing, targets
from app.webhooks.dispatch import body_of, headers_of
from tests.support.receiver import verify

# Computed outside the project: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
KNOWN = "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"


def due(**changes: object) -> Due:
    fields: dict[str, object] = {
        "id": 1,
        "webhook_id": UUID(int=7),
        "url": "https://example.com/hook",
        "secret": "whsec_test",
        "event_id": "812-44",
        "event_type": "job.succeeded",
        "event_at": datetime(2026, 12, 7, 19, 0, 0, 123456, tzinfo=UTC),
        "data": {"id": str(UUID(int=9)), "state": "succeeded", "result": {"message": "hi"}},
        "attempt": 1,
    }
    return Due(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_header_is_t_then_v1_the_hex_hmac_sha256_of_t_dot_body() -> None:
    value = signing.header("whsec_test", 1700000000, b'{"a":1}')
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", value)
    assert value == KNOWN
    assert verify("whsec_test", value, b'{"a":1}', now=1700000000)


def test_a_signature_fails_for_another_secret_body_or_a_stale_time() -> None:
    value = signing.header("whsec_test", 1700000000, b'{"a":1}')
    assert not verify("whsec_other", value, b'{"a":1}', now=1700000000)
    assert not verify("whsec_test", value, b'{"a":2}', now=1700000000)
    assert not verify("whsec_test", value, b'{"a":1}', now=1700000000 + 301)


def test_a_new_secret_is_whsec_and_random() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first.startswith("whsec_")
    assert len(first) > 40
    assert first != second


def test_a_delivery_s_body_is_the_event_and_the_same_bytes_on_every_attempt() -> None:
    body = body_of(due())
    assert body == body_of(due(attempt=5))
    assert orjson.loads(body) == {
        "id": "812-44",
        "type": "job.succeeded",
        "created": "2026-12-07T19:00:00.123456Z",
        "data": {"id": str(UUID(int=9)), "state": "succeeded", "result": {"message": "hi"}},
    }
    headers = headers_of(due(), body, now=1700000000.9)
    assert headers["Conveyor-Event-Id"] == "812-44"
    assert headers["Content-Type"] == "application/json"
    assert verify("whsec_test", headers["Conveyor-Signature"], body, now=1700000001)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "reserved"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_an_address_is_refused_with_its_reason_or_allowed(address: str, reason: str | None) -> None:
    assert targets.refusal_of(ipaddress.ip_address(address)) == reason


def test_a_host_is_refused_when_any_of_its_addresses_is() -> None:
    with pytest.raises(WebhookTargetRefused, match="private"):
        targets.check_addresses("mixed.example", ["93.184.216.34", "10.0.0.1"])
    assert targets.check_addresses("public.example", ["93.184.216.34"]) == ["93.184.216.34"]


def test_production_wants_https_and_no_url_holds_credentials() -> None:
    production = Settings.model_construct(environment="production", webhook_allow_private=None)
    with pytest.raises(WebhookTargetRefused, match="https"):
        targets.check_form("http://example.com/", production)
    assert targets.check_form("https://example.com/x", production) == ("example.com", 443)
    with pytest.raises(WebhookTargetRefused, match="credentials"):
        targets.check_form("https://user:pw@example.com/", production)
    assert not production.webhooks_may_reach_private
    development = Settings.model_construct(environment="development", webhook_allow_private=None)
    assert targets.check_form("http://127.0.0.1:8080/", development) == ("127.0.0.1", 8080)
    assert development.webhooks_may_reach_private
