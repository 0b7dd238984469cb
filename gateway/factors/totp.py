"""TOTP (RFC 6238): 30 s steps, six digits, one step of drift each way, no replay."""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import pyotp
import segno
from pydantic import BaseModel, ConfigDict, Field

from gateway.keys import KeyRing
from gateway.primitives import same_secret
from gateway.store import ChallengeRecord, FactorRecord, FactorStatus, Store

from .base import Answer, Enrolment, Started, Verification, code_of, open_data, seal_data

# ASCII digits only: \d would admit other scripts' digits, and $ a trailing newline.
CODE = re.compile(r"[0-9]{6}")
STEP = 30
SECRET_BYTES = 20  # 160 bits, RFC 4226 §4 recommendation
LABEL_MAX = 64


def new_secret() -> str:
    return base64.b32encode(os.urandom(SECRET_BYTES)).decode()


def otpauth_uri(secret: str, user: str, issuer: str) -> str:
    return pyotp.TOTP(secret, issuer=issuer, name=user).provisioning_uri()


def _qr(uri: str) -> segno.QRCode:
    return segno.make(uri, error="m", micro=False)  # authenticator apps read no Micro QR


def qr_svg(uri: str, qr: segno.QRCode | None = None) -> str:
    buf = io.BytesIO()
    # An explicit white background: scanners (and zbarimg) fail on transparent ones.
    (qr or _qr(uri)).save(buf, kind="svg", scale=4, border=4, light="white", dark="black",
                          xmldecl=False)
    return buf.getvalue().decode()


def terminal_qr(uri: str, qr: segno.QRCode | None = None) -> str:
    """The QR code in Unicode half blocks, two modules a character cell: light modules
    (and the quiet zone) are drawn, for the light-on-dark terminals most people use."""
    buf = io.StringIO()
    (qr or _qr(uri)).terminal(out=buf, compact=True)
    return buf.getvalue()


def enrolment_text(uri: str, secret: str, qr: segno.QRCode | None = None) -> str:
    """What a terminal shows of a new TOTP factor: the QR code, and the same by hand."""
    return ("Scan this QR code with your authenticator app:\n\n"
            f"{terminal_qr(uri, qr)}\n"
            "If the app cannot read it (it is drawn for a dark terminal background), add\n"
            "the key by hand (time-based, 6 digits, every 30 seconds):\n\n"
            f"Secret:       {secret}\n"
            f"otpauth URI:  {uri}\n")


def _aad(user: str, factor_id: str) -> str:
    return f"totp:{user}:{factor_id}"


def seal(keys: KeyRing, user: str, factor_id: str, secret: str) -> str:
    """The data document of a TOTP factor: its seed, sealed for this user and factor."""
    return seal_data(keys, _aad(user, factor_id), secret=secret)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code equals ``code`` within ±1 step, compared in constant time."""
    if not CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // STEP)
    found = None
    for step in (current - 1, current, current + 1):
        if same_secret(totp.generate_otp(step), code):
            found = step
    return found


class TotpEnrol(BaseModel):
    """Enrol an authenticator app; the body is optional."""

    label: str | None = Field(None, min_length=1, max_length=LABEL_MAX,
                              description="what the user calls the device; 'authenticator' "
                              "when absent")


class TotpEnrolled(BaseModel):
    """A pending TOTP factor: scan ``qr_svg`` or type ``secret``, then confirm with a code."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["totp"]
    status: Literal["pending"]
    label: str
    secret: str = Field(description="the base32 seed, shown once")
    otpauth_uri: str = Field(description="the otpauth:// URI the QR code holds")
    qr_svg: str = Field(description="the URI as a QR code, an SVG document")
    confirm_uri: str


class TotpFactor:
    type = "totp"
    delivers = False
    enrol_body = TotpEnrol
    enrolled = TotpEnrolled
    text_enrolment = True  # Accept: text/plain answers a QR code a terminal can show

    def __init__(self, store: Store, keys: KeyRing, issuer: str = "Stepgate") -> None:
        self.store = store
        self.keys = keys
        self.issuer = issuer

    def record(self, user: str, factor_id: str, secret: str, *, label: str, now: float,
               status: FactorStatus = "active") -> FactorRecord:
        """A TOTP record for ``secret`` (``stepgate users enrol-totp`` makes it active)."""
        return FactorRecord(id=factor_id, user=user, type=self.type, status=status, label=label,
                            data=seal(self.keys, user, factor_id, secret), created_at=now)

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        return any(r.type == self.type and r.status == "active" for r in records)

    def describe(self, prefix: str) -> dict[str, Any]:
        return {"type": self.type, "enrol": f"POST {prefix}/factors/totp",
                "confirm": f"POST {prefix}/factors/{{id}}/confirm",
                "answer": {"code": "the 6-digit code the authenticator app shows"}}

    async def enrol(self, user: str, factor_id: str, body: Mapping[str, Any],
                    now: float) -> Enrolment:
        secret = new_secret()
        uri = otpauth_uri(secret, user, self.issuer)
        record = self.record(user, factor_id, secret, label=body.get("label") or "authenticator",
                             now=now, status="pending")
        qr = _qr(uri)
        return Enrolment(record=record,
                         reply={"secret": secret, "otpauth_uri": uri, "qr_svg": qr_svg(uri, qr)},
                         text=enrolment_text(uri, secret, qr))

    def secret_of(self, record: FactorRecord) -> str:
        return open_data(self.keys, record.data, "secret", _aad(record.user, record.id))

    async def check(self, record: FactorRecord, code: str, now: float) -> Verification:
        step = matching_step(self.secret_of(record), code, now)
        if step is None:
            return Verification(False)
        # A code, or any earlier step's, accepted once is never accepted again (RFC 6238
        # §5.2). Such a code is a replay (a second submit, a code read over a shoulder), not
        # a guess: it says so. The stored counter settles a race the record did not see.
        if step <= record.counter or not await self.store.advance_counter(record.id, step, now):
            return Verification(False, record.id, reused=True)
        return Verification(True, record.id)

    async def confirm(self, record: FactorRecord, challenge: ChallengeRecord | None,
                      answer: Answer, now: float) -> Verification:
        return await self.check(record, code_of(answer), now)

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        return Started(extra={"hint": "Enter the code from your authenticator app"})

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     answer: Answer, now: float) -> Verification:
        code = code_of(answer)
        if not CODE.fullmatch(code):
            return Verification(False)
        replayed: Verification | None = None
        for record in records:
            if record.type == self.type and record.status == "active":
                result = await self.check(record, code, now)
                if result.ok:
                    return result
                replayed = replayed or (result if result.reused else None)
        return replayed or Verification(False)
