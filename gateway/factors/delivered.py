"""Codes delivered over a channel (SMS, e-mail, any named channel): 6-8 digits from a
CSPRNG, bound to one challenge, single use, at most ten minutes valid."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from gateway.config.settings import ChannelSettings
from gateway.factors.delivery import Deliverer
from gateway.keys import KeyRing
from gateway.store import ChallengeRecord, FactorRecord, Store

from .base import Started, Verification

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
    return keys.encrypt(address.encode(), _aad(user, factor_id))


class DeliveredFactor:
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

    def address_of(self, record: FactorRecord) -> str:
        return self.keys.decrypt(record.secret, _aad(record.user, record.id)).decode()

    def message(self, code: str) -> str:
        minutes = max(1, int(self.ch.ttl // 60))
        return (f"Your {self.issuer} verification code is {code}. It expires in {minutes} "
                f"minute{'s' if minutes != 1 else ''}. Nobody from {self.issuer} will ask you "
                "for it.")

    async def send_code(self, record: FactorRecord, challenge_id: str) -> str:
        """Deliver a fresh code for ``challenge_id``; returns its hash (DeliveryFailed on error)."""
        code = new_code(self.ch.digits)
        await self.deliverer.send(self.address_of(record), self.message(code))
        return code_hash(self.keys, challenge_id, code)

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        record = next(r for r in records if r.type == self.type and r.status == "active")
        digest = await self.send_code(record, challenge_id)
        return Started(factor_id=record.id, code_hash=digest,
                       extra={"hint": f"Code sent to {record.label}"})

    def check(self, challenge: ChallengeRecord, code: str) -> bool:
        if challenge.code_hash is None or not self.code_format.fullmatch(code):
            return False
        return hmac.compare_digest(code_hash(self.keys, challenge.id, code), challenge.code_hash)

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     code: str, now: float) -> Verification:
        # Single use: the caller moves the challenge from pending to verified atomically.
        return Verification(self.check(challenge, code), challenge.factor_id)
