"""Which URLs a webhook may call, checked when a subscription is made and again at each connect.

In production a target must be https, and (unless WEBHOOK_ALLOW_PRIVATE) its host must resolve
only to public addresses: not loopback, private, link-local, unspecified, multicast or otherwise
reserved. A name that resolved to a public address when the subscription was made may resolve
elsewhere later (DNS rebinding), so the sender resolves again at each new connection, checks
every address, and connects to the address it checked (`CheckedTransport`): the name is never
resolved a second time between the check and the connect. TLS still verifies the certificate
for the name, and the Host header carries the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from app.errors import WebhookTargetRefused
from app.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048
# A receiver's answer is read this far, for the status and the start of an error: the rest is
# not Conveyor's business, and an endless answer must not hold a sender.
MAX_ANSWER_BYTES = 16_384


def refusal_of(address: IPAddress) -> str | None:
    """Why a webhook may not reach `address` (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason, flagged in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),  # last: Python counts the ones above as private too
    ):
        if flagged:
            return reason
    return None if address.is_global else "reserved"


def check_addresses(host: str, addresses: Iterable[str]) -> list[str]:
    """The addresses, if every one may be reached; raises WebhookTargetRefused naming the first
    that may not."""
    checked = []
    for text in addresses:
        reason = refusal_of(ipaddress.ip_address(text.split("%", 1)[0]))
        if reason is not None:
            raise WebhookTargetRefused(f"webhook host {host!r} resolves to a {reason} address ({text})")
        checked.append(text)
    if not checked:
        raise WebhookTargetRefused(f"webhook host {host!r} does not resolve")
    return checked


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a literal address: itself)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise WebhookTargetRefused(f"webhook host {host!r} does not resolve: {error}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_form(url: str, settings: Settings) -> tuple[str, int]:
    """The URL's host and port if its form is allowed; raises WebhookTargetRefused otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookTargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise WebhookTargetRefused(f"not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetRefused("the URL must be http(s)://host/...")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetRefused("the URL must not hold credentials: verify deliveries by their signature")
    if settings.environment == "production" and parts.scheme != "https":
        raise WebhookTargetRefused("webhook URLs must be https in production")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, settings: Settings) -> None:
    """Raise WebhookTargetRefused unless `url` may be a webhook's target now."""
    host, port = check_form(url, settings)
    if not settings.webhooks_may_reach_private:
        check_addresses(host, await resolve(host, port))


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to addresses the policy allows: resolves, checks every address,
    connects to a checked one (the name is not resolved again on the way)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        if not self._settings.webhooks_may_reach_private:
            addresses = check_addresses(host, addresses)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = failed
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise WebhookTargetRefused("webhooks do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go through `CheckedBackend`; no proxy (a proxy would
    resolve the name itself). The answer's body is read up to MAX_ANSWER_BYTES."""

    def __init__(self, settings: Settings, max_connections: int) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=CheckedBackend(settings),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        answer = await self._pool.handle_async_request(core)
        body = bytearray()
        try:
            if not isinstance(answer.stream, AsyncIterable):
                raise TypeError("an async connection pool answered with a sync stream")
            async for chunk in answer.stream:
                body += chunk
                if len(body) >= MAX_ANSWER_BYTES:
                    break
        finally:
            await answer.aclose()
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            content=bytes(body[:MAX_ANSWER_BYTES]),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
