"""The development SMTP sink `conveyor dev` starts when nothing listens on SMTP_HOST:SMTP_PORT.

So the README's first example, an email, succeeds on a machine with no mail server: the
sink accepts every message and prints who it was for and its subject on the console (a
development convenience; the services' own logs never carry an address).
"""

from __future__ import annotations

import socket
from email import message_from_bytes
from email.policy import default
from typing import Any

import typer


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


class _Printer:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(bytes(envelope.content), policy=default)
        recipients = ", ".join(envelope.rcpt_tos)
        typer.echo(f"[mail sink] to {recipients}: {message.get('Subject', '(no subject)')}", err=True)
        return "250 Message accepted for delivery"


def start(host: str, port: int) -> Any | None:
    """A running sink (stop it with `.stop()`), or None when aiosmtpd is not installed."""
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        return None
    controller = Controller(_Printer(), hostname=host, port=port)
    controller.start()
    return controller
