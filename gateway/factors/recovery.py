"""Recovery codes: single use, shown once, stored only as hashes; a new set voids the old."""

from __future__ import annotations

import base64
import hashlib
import os
import re

from gateway.store import ChallengeRecord, FactorRecord, Store

from .base import Started, Verification

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


class RecoveryFactor:
    type = "recovery"

    def __init__(self, store: Store) -> None:
        self.store = store

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        return recovery_left > 0

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        return Started(extra={"hint": "Enter one of your recovery codes"})

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     code: str, now: float) -> Verification:
        clean = normalise(code)
        if clean is None:
            return Verification(False)
        ok = await self.store.consume_recovery_code(user, code_hash(user, clean), now)
        return Verification(ok)
