"""TOTP (RFC 6238): 30 s steps, six digits, one step of drift each way, no replay."""

from __future__ import annotations

import base64
import hmac
import io
import os
import re

import pyotp
import segno

from gateway.keys import KeyRing
from gateway.store import ChallengeRecord, FactorRecord, Store

from .base import Started, Verification

# ASCII digits only: \d would admit other scripts' digits, and $ a trailing newline.
CODE = re.compile(r"[0-9]{6}")
STEP = 30
SECRET_BYTES = 20  # 160 bits, RFC 4226 §4 recommendation


def new_secret() -> str:
    return base64.b32encode(os.urandom(SECRET_BYTES)).decode()


def otpauth_uri(secret: str, user: str, issuer: str) -> str:
    return pyotp.TOTP(secret, issuer=issuer, name=user).provisioning_uri()


def qr_svg(uri: str) -> str:
    buf = io.BytesIO()
    # An explicit white background: scanners (and zbarimg) fail on transparent ones.
    segno.make(uri, error="m").save(buf, kind="svg", scale=4, border=4, light="white",
                                    dark="black", xmldecl=False)
    return buf.getvalue().decode()


def terminal_qr(uri: str) -> str:
    buf = io.StringIO()
    segno.make(uri, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()


def _aad(user: str, factor_id: str) -> str:
    return f"totp:{user}:{factor_id}"


def seal(keys: KeyRing, user: str, factor_id: str, secret: str) -> str:
    return keys.encrypt(secret.encode(), _aad(user, factor_id))


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code equals ``code`` within ±1 step, compared in constant time."""
    if not CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // STEP)
    found = None
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


class TotpFactor:
    type = "totp"

    def __init__(self, store: Store, keys: KeyRing) -> None:
        self.store = store
        self.keys = keys

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        return any(r.type == "totp" and r.status == "active" for r in records)

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        return Started(extra={"hint": "Enter the code from your authenticator app"})

    def secret_of(self, record: FactorRecord) -> str:
        return self.keys.decrypt(record.secret, _aad(record.user, record.id)).decode()

    async def check(self, record: FactorRecord, code: str, now: float) -> bool:
        step = matching_step(self.secret_of(record), code, now)
        # A code, or any earlier step's, accepted once is never accepted again.
        return step is not None and await self.store.advance_step(record.id, step, now)

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     code: str, now: float) -> Verification:
        if not CODE.fullmatch(code):
            return Verification(False)
        for record in records:
            if record.type == "totp" and record.status == "active":
                if await self.check(record, code, now):
                    return Verification(True, record.id)
        return Verification(False)

