"""Signing a delivery as Stripe signs its webhooks, so receivers can reuse what they know.

`Conveyor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, keyed with the subscription's whole
secret (`whsec_...`, as UTF-8), of the text `<t>.<body>`: the timestamp, a dot, and the raw body
bytes exactly as sent. A receiver recomputes it over the raw body, compares in constant time,
and refuses a `t` older than its tolerance (Stripe's libraries use 300 s) against replays.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "Conveyor-Signature"
EVENT_ID_HEADER = "Conveyor-Event-Id"
SCHEME = "v1"


def new_secret() -> str:
    """A random signing secret: 32 bytes, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of the Conveyor-Signature header."""
    return f"t={timestamp},{SCHEME}={signature(secret, timestamp, body)}"
