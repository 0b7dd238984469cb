"""The Factor interface: what the challenge endpoints ask of every kind of second factor.

A factor starts a challenge (a delivered code is sent here; an authenticator app
needs nothing) and later checks what the client sends back. WebAuthn and push fit
the same two calls: ``start`` returns the options or push id in its hint fields,
``verify`` checks the assertion or polls the approval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.store import ChallengeRecord, FactorRecord


@dataclass(frozen=True)
class Verification:
    ok: bool
    factor_id: str | None = None


@dataclass
class Started:
    factor_id: str | None = None
    code_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Factor(Protocol):
    type: str

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        """Whether the user has this factor active."""
        ...

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started: ...

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     code: str, now: float) -> Verification: ...
