"""The dashboard's sign-in: a cookie naming the key it was made with, signed, with an expiry.

The cookie is `<key id>.<expires, unix seconds>.<signature>`, the signature an HMAC of both
with KEYS_SECRET. It holds no secret: the key itself never leaves the sign-in form. Every
request checks the signature and the expiry, and that the key is still live, so revoking a
key signs its sessions out within KEYS_CACHE_SECONDS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from app.settings import get_settings

COOKIE = "conveyor_session"


def _signature(key_id: str, expires: int) -> str:
    secret = get_settings().keys_secret.get_secret_value().encode()
    mac = hmac.new(secret, f"session|{key_id}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(key_id: str, seconds: int | None = None) -> tuple[str, int]:
    """A session value and how long it lasts."""
    lasts = seconds or get_settings().session_seconds
    expires = int(time.time()) + lasts
    return f"{key_id}.{expires}.{_signature(key_id, expires)}", lasts


def key_id_of(value: str) -> str | None:
    """The key id a valid, unexpired session names; None for anything else."""
    key_id, _, rest = value.partition(".")
    expires_text, _, signature = rest.partition(".")
    if not key_id or not expires_text.isdigit() or not signature:
        return None
    expires = int(expires_text)
    if expires < time.time() or not hmac.compare_digest(signature, _signature(key_id, expires)):
        return None
    return key_id
