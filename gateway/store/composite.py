"""A store combined from a durable SQL store and Redis for the hot state.

Factors, recovery codes, challenges and the audit log stay in the durable store; token
uses, generations, failures, lockouts and windowed counts live in Redis
(``gateway.store.redis``). Deleting a user spans both: the lockout is forgotten and the
user's tokens revoked in Redis first, then the factors and recovery codes go.

The store's identity joins both parts: the durable store's instance id and the Redis
epoch. When Redis loses its state (a restart without persistence), the epoch changes and
with it ``instance_id``, so tickets and tokens issued before, which carry the old id, are
refused: a spent token is never taken for a fresh one. The change is noticed at ``open``,
and at run time by the first reservation or generation read that meets the new epoch
(that call fails with StoreUnavailable; ``instance_id`` is new from then on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import ChallengeRecord, FactorRecord, ReserveResult, Store, UserLock
from .redis import RedisHotStore


class Combined:
    """Every concern of the store: durable ones from ``durable``, hot ones from ``hot``."""

    def __init__(self, durable: Store, hot: RedisHotStore) -> None:
        self.durable = durable
        self.hot = hot

    @property
    def instance_id(self) -> str:
        if not self.durable.instance_id or not self.hot.epoch:
            return ""
        return f"{self.durable.instance_id}.{self.hot.epoch}"

    @instance_id.setter
    def instance_id(self, value: str) -> None:
        raise AttributeError("a combined store's instance id is made of its parts' own")

    def watch_instance(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(new instance id)`` when the id changes while running (Redis
        lost its state): whoever signs tokens must sign and accept the new id from then on."""
        self.hot.on_epoch_change = lambda: callback(self.instance_id)

    # ------------------------------------------------------------------ Lifecycle

    async def open(self, *, create: bool = False) -> None:
        await self.durable.open(create=create)
        try:
            await self.hot.open(create=create)
        except BaseException:
            await self.durable.close()
            raise

    async def ready(self) -> list[str]:
        return [*await self.durable.ready(), *await self.hot.ready()]

    async def close(self) -> None:
        try:
            await self.hot.close()
        finally:
            await self.durable.close()

    # ------------------------------------------------------------------ FactorStore

    async def add_factor(self, factor: FactorRecord) -> None:
        await self.durable.add_factor(factor)

    async def factors(self, user: str) -> list[FactorRecord]:
        return await self.durable.factors(user)

    async def activate_factor(self, user: str, factor_id: str) -> bool:
        return await self.durable.activate_factor(user, factor_id)

    async def delete_factor(self, user: str, factor_id: str) -> bool:
        return await self.durable.delete_factor(user, factor_id)

    async def delete_user(self, user: str) -> int:
        # Revoke first: if the durable part then fails, the caller retries a deletion
        # whose tokens are already dead, never one whose factors are gone and tokens live.
        await self.hot.forget_user(user)
        return await self.durable.delete_user(user)

    async def advance_counter(self, factor_id: str, value: int, now: float) -> bool:
        return await self.durable.advance_counter(factor_id, value, now)

    async def touch_factor(self, factor_id: str, now: float) -> None:
        await self.durable.touch_factor(factor_id, now)

    async def replace_recovery_codes(self, user: str, hashes: list[str], now: float) -> None:
        await self.durable.replace_recovery_codes(user, hashes, now)

    async def users(self) -> list[str]:
        return await self.durable.users()

    async def recovery_code_hashes(self, user: str) -> list[str]:
        return await self.durable.recovery_code_hashes(user)

    async def consume_recovery_code(self, user: str, code_hash: str, now: float) -> bool:
        return await self.durable.consume_recovery_code(user, code_hash, now)

    async def recovery_codes_left(self, user: str) -> int:
        return await self.durable.recovery_codes_left(user)

    # ------------------------------------------------------------------ ChallengeStore

    async def add_challenge(self, challenge: ChallengeRecord) -> None:
        await self.durable.add_challenge(challenge)

    async def challenge(self, challenge_id: str) -> ChallengeRecord | None:
        return await self.durable.challenge(challenge_id)

    async def fail_challenge(self, challenge_id: str) -> int:
        return await self.durable.fail_challenge(challenge_id)

    async def verify_challenge(self, challenge_id: str) -> bool:
        return await self.durable.verify_challenge(challenge_id)

    async def verified_factors(self, user: str, ticket_nonce: str) -> set[str]:
        return await self.durable.verified_factors(user, ticket_nonce)

    async def latest_challenge(self, user: str, ticket_nonce: str,
                               factor: str) -> ChallengeRecord | None:
        return await self.durable.latest_challenge(user, ticket_nonce, factor)

    async def void_challenge(self, challenge_id: str) -> None:
        await self.durable.void_challenge(challenge_id)

    # ------------------------------------------------------------------ TokenUseStore

    async def reserve_use(self, jti: str, max_uses: int, expires_at: float,
                          now: float) -> ReserveResult:
        return await self.hot.reserve_use(jti, max_uses, expires_at, now)

    async def commit_use(self, jti: str) -> None:
        await self.hot.commit_use(jti)

    async def release_use(self, jti: str) -> None:
        await self.hot.release_use(jti)

    async def generation(self, user: str) -> int:
        return await self.hot.generation(user)

    async def bump_generation(self, user: str) -> int:
        return await self.hot.bump_generation(user)

    # ------------------------------------------------------------------ CounterStore

    async def user_lock(self, user: str) -> UserLock:
        return await self.hot.user_lock(user)

    async def add_failure(self, user: str) -> int:
        return await self.hot.add_failure(user)

    async def lock_user(self, user: str, until: float, hard: bool) -> None:
        await self.hot.lock_user(user, until, hard)

    async def reset_failures(self, user: str) -> None:
        await self.hot.reset_failures(user)

    async def unlock(self, user: str) -> None:
        await self.hot.unlock(user)

    async def hit(self, key: str, window: float, now: float, amount: int = 1) -> int:
        return await self.hot.hit(key, window, now, amount)

    # ------------------------------------------------------------------ AuditStore

    async def append_audit(self, events: list[dict[str, Any]]) -> None:
        await self.durable.append_audit(events)

    async def audit(self, user: str | None, since: float | None, until: float | None,
                    limit: int) -> list[dict[str, Any]]:
        return await self.durable.audit(user, since, until, limit)
