"""The store contract, one protocol per concern; ``Store`` is all of them together.

A backend may implement only some of the concerns (Redis will hold only the hot state:
token uses and generations, counters) and be combined with another (SQLite, PostgreSQL)
for the rest. Every method that decides something (reserving a token use, accepting a
TOTP step, consuming a recovery code, counting failures) is atomic in its backend, so
several gateway processes sharing one store never both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

ReserveResult = Literal["ok", "busy", "used"]


class StoreUnavailable(Exception):
    """The backend failed or did not answer in time; callers answer 503 and never forward
    (fail closed)."""


class StoreMissing(Exception):
    """The store was created before and is gone; the gateway refuses to start afresh."""


FactorStatus = Literal["pending", "active"]


@dataclass(frozen=True)
class FactorRecord:
    """One enrolled factor. ``data`` is a JSON document the factor owns (a TOTP seed, a
    delivered-code address, later a WebAuthn credential), its secrets sealed with the data
    key ring; ``counter`` only moves forward (TOTP's last accepted step, a WebAuthn sign
    counter), see ``Store.advance_counter``."""

    id: str
    user: str
    type: str
    status: FactorStatus
    label: str
    data: str
    created_at: float
    last_used_at: float | None = None
    counter: int = -1


@dataclass(frozen=True)
class ChallengeRecord:
    id: str
    user: str
    ticket_nonce: str
    ticket: str  # the signed ticket the challenge answers; it carries no secret
    factor: str
    factor_id: str | None
    state: Literal["pending", "verified", "expired", "failed"]
    attempts_left: int
    created_at: float
    expires_at: float
    ticket_expires_at: float
    code_hash: str | None = None
    sent_at: float | None = None


@dataclass(frozen=True)
class UserLock:
    failures: int
    locked_until: float
    hard: bool


class Lifecycle(Protocol):
    """Opening and closing a backend, and the identity of the store it holds."""

    instance_id: str  # made when the store is created; tickets and tokens carry it

    async def open(self, *, create: bool = False) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> list[str]:
        """What is down, one sentence each naming the part ("store: ...", "redis: ..."), or
        [] when a real round trip succeeded (GET {prefix}/ready)."""
        ...


class FactorStore(Protocol):
    """Enrolled factors and recovery-code hashes: durable, per user."""

    async def add_factor(self, factor: FactorRecord) -> None: ...
    async def factors(self, user: str) -> list[FactorRecord]: ...
    async def activate_factor(self, user: str, factor_id: str) -> bool: ...
    async def delete_factor(self, user: str, factor_id: str) -> bool: ...
    async def delete_user(self, user: str) -> int:
        """Remove factors, recovery codes and lockout; revoke the user's tokens. It spans
        three concerns (counters and generations too): a store combined from several
        backends must do all of it, whichever backend holds each part."""
        ...
    async def advance_counter(self, factor_id: str, value: int, now: float) -> bool:
        """Move the factor's counter forward to ``value`` (and mark it used); False when the
        counter already is at ``value`` or beyond: a TOTP step or a WebAuthn signature
        accepted once is never accepted again (RFC 6238 §5.2, WebAuthn §6.1.1)."""
        ...
    async def touch_factor(self, factor_id: str, now: float) -> None: ...

    async def replace_recovery_codes(self, user: str, hashes: list[str], now: float) -> None: ...
    async def users(self) -> list[str]:
        """Every user with a factor or recovery codes, sorted (for copying a store)."""
        ...
    async def recovery_code_hashes(self, user: str) -> list[str]:
        """The hashes of the user's unused recovery codes, sorted (for copying a store)."""
        ...
    async def consume_recovery_code(self, user: str, code_hash: str, now: float) -> bool: ...
    async def recovery_codes_left(self, user: str) -> int: ...


class ChallengeStore(Protocol):
    """Challenges a ticket's holder answers, and which factors each ticket has verified."""

    async def add_challenge(self, challenge: ChallengeRecord) -> None: ...
    async def challenge(self, challenge_id: str) -> ChallengeRecord | None: ...
    async def fail_challenge(self, challenge_id: str) -> int:
        """Spend one attempt; returns attempts left (the challenge is 'failed' at 0)."""
        ...
    async def verify_challenge(self, challenge_id: str) -> bool:
        """Move a pending challenge to verified; False if it was not pending."""
        ...
    async def verified_factors(self, user: str, ticket_nonce: str) -> set[str]: ...
    async def latest_challenge(self, user: str, ticket_nonce: str,
                               factor: str) -> ChallengeRecord | None:
        """The newest pending challenge for this ticket and factor (resends void it)."""
        ...
    async def void_challenge(self, challenge_id: str) -> None: ...


class TokenUseStore(Protocol):
    """Counted token uses, and the per-user generations every token carries (bumping one
    revokes all of that user's outstanding tokens)."""

    async def reserve_use(self, jti: str, max_uses: int, expires_at: float,
                          now: float) -> ReserveResult:
        """Reserve one use; a reservation holds until committed, released or the token
        expires (it never lapses on its own: the request may have reached the upstream)."""
        ...
    async def commit_use(self, jti: str) -> None: ...
    async def release_use(self, jti: str) -> None: ...

    async def generation(self, user: str) -> int: ...
    async def bump_generation(self, user: str) -> int: ...


class CounterStore(Protocol):
    """Throttling state: consecutive failures and lockouts per user, windowed event counts."""

    async def user_lock(self, user: str) -> UserLock: ...
    async def add_failure(self, user: str) -> int:
        """Count one more consecutive failure; returns the count (atomic)."""
        ...
    async def lock_user(self, user: str, until: float, hard: bool) -> None:
        """Lock until ``until`` (or for good); revokes the user's tokens (a generation bump,
        so a backend holding counters holds generations too, or is combined with one)."""
        ...
    async def reset_failures(self, user: str) -> None: ...
    async def unlock(self, user: str) -> None:
        """Reset the failures and lockout and revoke the user's outstanding tokens."""
        ...
    async def hit(self, key: str, window: float, now: float, amount: int = 1) -> int:
        """Count ``amount`` events under ``key`` in the current fixed window (-1 takes one
        back, e.g. after a failed delivery); returns the count."""
        ...


class AuditStore(Protocol):
    """The audit events of known users, read back by user and time window."""

    async def append_audit(self, events: list[dict[str, Any]]) -> None:
        """Keep a batch of events, in one transaction."""
        ...
    async def audit(self, user: str | None, since: float | None, until: float | None,
                    limit: int) -> list[dict[str, Any]]: ...


class Store(Lifecycle, FactorStore, ChallengeStore, TokenUseStore, CounterStore, AuditStore,
            Protocol):
    """Every concern: what the gateway is given, whether from one backend or several."""


# Every concern, for code that walks the whole interface (the contract tests do).
CONCERNS: tuple[type, ...] = (Lifecycle, FactorStore, ChallengeStore, TokenUseStore,
                              CounterStore, AuditStore)
