"""Delivering messages over a channel: a command, a webhook, or SMTP for e-mail."""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from typing import Protocol

from gateway.config.settings import ChannelSettings
from gateway.problems import Problem

log = logging.getLogger("stepgate.delivery")


class DeliveryFailed(Problem):
    """The channel did not take the message: 502, and nothing is consumed."""

    def __init__(self, channel: str) -> None:
        super().__init__("delivery-failed",
                         detail=f"the gateway could not send a message over '{channel}'; "
                         "nothing was used up, try again later", channel=channel)


class Deliverer(Protocol):
    async def send(self, address: str, message: str) -> None: ...


class CommandDeliverer:
    """Runs the configured argv with the message on stdin and the address in
    STEPGATE_ADDRESS (never on the command line, where `ps` would show it)."""

    def __init__(self, ch: ChannelSettings) -> None:
        self.ch = ch

    async def send(self, address: str, message: str) -> None:
        env = dict(os.environ, STEPGATE_ADDRESS=address, STEPGATE_CHANNEL=self.ch.name)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.ch.command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env)
        except OSError as exc:
            log.error("channel %s: cannot start its command: %s", self.ch.name, exc.strerror)
            raise DeliveryFailed(self.ch.name) from None
        try:
            await asyncio.wait_for(proc.communicate(message.encode()), self.ch.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("channel %s: command timed out", self.ch.name)
            raise DeliveryFailed(self.ch.name) from None
        if proc.returncode != 0:
            log.error("channel %s: command exited with %s", self.ch.name, proc.returncode)
            raise DeliveryFailed(self.ch.name)


class WebhookDeliverer:
    """POSTs {"channel", "address", "message"} as JSON; any 2xx is success."""

    def __init__(self, ch: ChannelSettings) -> None:
        self.ch = ch

    async def send(self, address: str, message: str) -> None:
        import httpx
        doc = {"channel": self.ch.name, "address": address, "message": message}
        try:
            async with httpx.AsyncClient(timeout=self.ch.timeout, trust_env=False) as client:
                resp = await client.post(self.ch.webhook_url, json=doc,
                                         headers=dict(self.ch.webhook_headers))
        except httpx.HTTPError as exc:
            log.error("channel %s: webhook failed: %s", self.ch.name, exc.__class__.__name__)
            raise DeliveryFailed(self.ch.name) from None
        if not 200 <= resp.status_code < 300:
            log.error("channel %s: webhook answered %s", self.ch.name, resp.status_code)
            raise DeliveryFailed(self.ch.name)


class SmtpDeliverer:
    def __init__(self, ch: ChannelSettings) -> None:
        assert ch.smtp is not None
        self.ch = ch
        self.smtp = ch.smtp

    def _send(self, address: str, message: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.smtp.sender
        msg["To"] = address
        msg["Subject"] = self.ch.subject
        msg.set_content(message)
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=self.ch.timeout) as client:
            if self.smtp.starttls:
                client.starttls()
            user = os.environ.get(self.smtp.username_env or "", "")
            if user:
                client.login(user, os.environ.get(self.smtp.password_env or "", ""))
            client.send_message(msg)

    async def send(self, address: str, message: str) -> None:
        try:
            await asyncio.to_thread(self._send, address, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("channel %s: SMTP failed: %s", self.ch.name, exc.__class__.__name__)
            raise DeliveryFailed(self.ch.name) from None


# Delivery channels by the kind the configuration names (config/registry.py CHANNEL_KINDS).
KINDS: dict[str, Callable[[ChannelSettings], Deliverer]] = {
    "command": CommandDeliverer,
    "webhook": WebhookDeliverer,
    "smtp": SmtpDeliverer,
}


def deliverer(ch: ChannelSettings) -> Deliverer:
    return KINDS[ch.kind](ch)
