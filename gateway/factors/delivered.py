"""Codes delivered over a channel (SMS, e-mail, any named channel): 6-8 digits from a
CSPRNG, bound to one challenge, single use, at most ten minutes valid."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.config.settings import ChannelSettings
from gateway.factors.delivery import Deliverer
from gateway.keys import KeyRing
from gateway.metrics import METRICS
from gateway.primitives import same_secret
from gateway.problems import Problem, bad_request
from gateway.store import ChallengeRecord, FactorRecord, Store

from .base import Answer, Enrolment, Started, Verification, code_of, open_data, seal_data

ADDRESS = {
    "e164": re.compile(r"\+[1-9][0-9]{6,14}"),
    "email": re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}"
                        r"(?:\.[A-Za-z0-9-]{1,63})+"),
    "any": re.compile(r"[^\x00-\x1f\x7f]{1,256}"),
}


def valid_address(kind: str, address: str) -> bool:
    return ADDRESS[kind].fullmatch(address) is not None


def mask(address: str) -> str:
    """What a hint may show: enough to recognise, not enough to harvest."""
    if "@" in address:
        local, _, domain = address.rpartition("@")
        return f"{local[:1]}•••@{domain}"
    if address.startswith("+"):
        visible_head, visible_tail = address[:3], address[-2:]
        middle = "".join("•" if c.isdigit() else c for c in address[3:-2])
        return f"{visible_head} {middle} {visible_tail}".replace("  ", " ")
    return "•••" + address[-2:] if len(address) > 4 else "•••"


def new_code(digits: int) -> str:
    return str(secrets.randbelow(10 ** digits)).zfill(digits)


def code_hash(keys: KeyRing, challenge_id: str, code: str) -> str:
    # The challenge id is part of the MAC: a code from challenge A fails on challenge B.
    return hmac.new(keys.mac_key, f"{challenge_id}\x00{code}".encode(), hashlib.sha256).hexdigest()


def _aad(user: str, factor_id: str) -> str:
    return f"address:{user}:{factor_id}"


def seal_address(keys: KeyRing, user: str, factor_id: str, address: str) -> str:
    """The data document of a delivered-code factor: its address, sealed for this user and
    factor."""
    return seal_data(keys, _aad(user, factor_id), address=address)


EXPECTED = {"e164": "a phone number in E.164 form like +33612345678", "email": "an e-mail address"}


class AddressEnrol(BaseModel):
    """Enrol an address on a delivered-code channel; a code is sent to it at once."""

    address: str = Field(min_length=1, max_length=256,
                         description="where codes go: a phone number in E.164 form, an e-mail "
                         "address, or what the channel expects")


class ChannelEnrolled(BaseModel):
    """A pending delivered-code factor: confirm with the code sent to the address."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: str
    status: Literal["pending"]
    label: str = Field(description="the address, masked")
    hint: str
    expires_in: int = Field(description="seconds the code stays valid")
    confirm_uri: str


class DeliveredFactor:
    delivers = True
    enrol_body = AddressEnrol
    enrolled = ChannelEnrolled

    def __init__(self, ch: ChannelSettings, store: Store, keys: KeyRing, deliverer: Deliverer,
                 issuer: str) -> None:
        self.ch = ch
        self.type = ch.name
        self.store = store
        self.keys = keys
        self.deliverer = deliverer
        self.issuer = issuer
        self.code_format = re.compile(f"[0-9]{{{ch.digits}}}")

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        return any(r.type == self.type and r.status == "active" for r in records)

    def describe(self, prefix: str) -> dict[str, Any]:
        return {"type": self.type, "enrol": f"POST {prefix}/factors/{self.type}",
                "address": EXPECTED.get(self.ch.address, "an address"),
                "confirm": f"POST {prefix}/factors/{{id}}/confirm",
                "answer": {"code": f"the {self.ch.digits}-digit code sent to the address"},
                "delivers": True}

    def address_of(self, record: FactorRecord) -> str:
        return open_data(self.keys, record.data, "address", _aad(record.user, record.id))

    async def send(self, address: str, message: str) -> None:
        """Hand a message to the channel (DeliveryFailed when it does not take it)."""
        try:
            await self.deliverer.send(address, message)
        except Exception:
            METRICS.delivery(self.type, False)
            raise
        METRICS.delivery(self.type, True)

    def message(self, code: str) -> str:
        minutes = max(1, int(self.ch.ttl // 60))
        return (f"Your {self.issuer} verification code is {code}. It expires in {minutes} "
                f"minute{'s' if minutes != 1 else ''}. Nobody from {self.issuer} will ask you "
                "for it.")

    async def enrol(self, user: str, factor_id: str, body: Mapping[str, Any],
                    now: float) -> Enrolment:
        address = str(body["address"])
        if not valid_address(self.ch.address, address):
            raise bad_request(f"expected {EXPECTED.get(self.ch.address, 'an address')}",
                              "invalid-address")
        # Nothing is stored yet: the caller sends the first code before it keeps the
        # record, so a failed delivery creates nothing (docs/protocol.md).
        record = FactorRecord(id=factor_id, user=user, type=self.type, status="pending",
                              label=mask(address),
                              data=seal_address(self.keys, user, factor_id, address),
                              created_at=now)
        return Enrolment(record=record, reply={}, challenge=True)

    async def send_code(self, record: FactorRecord, challenge_id: str) -> str:
        """Deliver a fresh code for ``challenge_id``; returns its hash (DeliveryFailed on error)."""
        code = new_code(self.ch.digits)
        await self.send(self.address_of(record), self.message(code))
        return code_hash(self.keys, challenge_id, code)

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        record = next(r for r in records if r.type == self.type)
        digest = await self.send_code(record, challenge_id)
        return Started(factor_id=record.id, code_hash=digest, ttl=self.ch.ttl,
                       extra={"hint": f"Code sent to {record.label}"})

    def check(self, challenge: ChallengeRecord, code: str) -> bool:
        if challenge.code_hash is None or not self.code_format.fullmatch(code):
            return False
        return same_secret(code_hash(self.keys, challenge.id, code), challenge.code_hash)

    async def confirm(self, record: FactorRecord, challenge: ChallengeRecord | None,
                      answer: Answer, now: float) -> bool:
        if challenge is None:
            raise Problem("challenge-gone", detail="enrol the address again for a new code")
        return self.check(challenge, code_of(answer))

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     answer: Answer, now: float) -> Verification:
        # Single use: the caller moves the challenge from pending to verified atomically.
        return Verification(self.check(challenge, code_of(answer)), challenge.factor_id)
