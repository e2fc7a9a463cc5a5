"""An SMTP server that records what it receives, and refuses or defers chosen recipients."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

# Recipients whose local part starts with these words get these replies.
REJECT_PREFIX = "reject"  # 550: permanent
DEFER_PREFIX = "defer"  # 451: transient


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes


@dataclass
class RecordingHandler:
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        local = address.split("@", 1)[0].lower()
        if local.startswith(REJECT_PREFIX):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith(DEFER_PREFIX):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.recipients]


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.handler = RecordingHandler()
        self.port = port
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=port)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
