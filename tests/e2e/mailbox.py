"""A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from aiosmtpd.controller import Controller

from ..conftest import free_port


class Mailbox:
    port: int

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos),
                              envelope.content.decode("utf-8", "replace")))
        return "250 OK"

    def to(self, address: str) -> list[str]:
        return [body for rcpt, body in self.messages if address in rcpt]

    def wait(self, to: str, count: int, timeout: float = 10.0) -> list[str]:
        """The messages to ``to`` once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = self.to(to)
            if len(mine) >= count:
                return mine
            time.sleep(0.05)
        raise AssertionError(f"{to} got {len(self.to(to))} messages, expected {count}")


M = TypeVar("M", bound=Mailbox)


@contextmanager
def serving(box: M) -> Iterator[M]:
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port
    try:
        yield box
    finally:
        controller.stop()
