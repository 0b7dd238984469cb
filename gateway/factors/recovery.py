"""Recovery codes: single use, shown once, stored only as hashes; a new set voids the old."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.store import ChallengeRecord, FactorRecord, Store

from .base import Answer, Enrolment, Started, Verification, code_of

GROUP = 4  # 16 base32 characters = 80 bits per code
_CLEAN = re.compile(r"[\s-]")
_VALID = re.compile(r"[A-Z2-7]{16}")


def format_code(raw: str) -> str:
    return "-".join(raw[i:i + GROUP] for i in range(0, len(raw), GROUP))


def new_codes(count: int) -> list[str]:
    return [format_code(base64.b32encode(os.urandom(10)).decode()) for _ in range(count)]


def normalise(code: str) -> str | None:
    clean = _CLEAN.sub("", code).upper()
    return clean if _VALID.fullmatch(clean) else None


def code_hash(user: str, code: str) -> str:
    # Codes carry 80 bits, so a salted SHA-256 is enough: there is no dictionary to try.
    return hashlib.sha256(f"stepgate-recovery\x00{user}\x00{code}".encode()).hexdigest()


class RecoveryEnrol(BaseModel):
    """Generating recovery codes takes no options; the body is optional."""


class RecoveryCodes(BaseModel):
    """A new set of recovery codes, shown once; the old set stops working."""

    model_config = ConfigDict(extra="forbid")
    codes: list[str] = Field(description="single-use codes, XXXX-XXXX-XXXX-XXXX")
    count: int


class RecoveryFactor:
    type = "recovery"
    delivers = False
    enrol_body = RecoveryEnrol
    enrolled = RecoveryCodes

    def __init__(self, store: Store, count: int = 10) -> None:
        self.store = store
        self.count = count

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        return recovery_left > 0

    def describe(self, prefix: str) -> dict[str, Any]:
        return {"type": self.type, "enrol": f"POST {prefix}/recovery-codes",
                "answer": {"code": "one of the recovery codes, each usable once"}}

    async def enrol(self, user: str, factor_id: str, body: Mapping[str, Any],
                    now: float) -> Enrolment:
        """A new set, kept at once: the codes live beside the factors, not in a record."""
        codes = new_codes(self.count)
        await self.store.replace_recovery_codes(
            user, [code_hash(user, normalise(c) or "") for c in codes], now)
        return Enrolment(reply={"codes": codes, "count": len(codes)},
                         event="recovery_codes_regenerated", details={"count": len(codes)},
                         notice="new recovery codes were generated (the old ones no longer work)")

    async def confirm(self, record: FactorRecord, challenge: ChallengeRecord | None,
                      answer: Answer, now: float) -> bool:
        return False  # a new set is usable at once: there is never a pending record

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        return Started(extra={"hint": "Enter one of your recovery codes"})

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     answer: Answer, now: float) -> Verification:
        clean = normalise(code_of(answer))
        if clean is None:
            return Verification(False)
        ok = await self.store.consume_recovery_code(user, code_hash(user, clean), now)
        return Verification(ok)
