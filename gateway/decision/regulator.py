"""Throttling in one place (docs/configuration.md): wrong codes, lockouts with back-off, challenge and
send rates. It takes its store and clock in the constructor, so tests freeze time."""

from __future__ import annotations

from collections.abc import Callable

from gateway.audit import Audit
from gateway.config.settings import ThrottleSettings
from gateway.metrics import METRICS
from gateway.primitives import window_of
from gateway.problems import Problem, retry_later
from gateway.store import Store


def locked(retry_after: float | None) -> Problem:
    if retry_after is not None:
        return retry_later("locked", retry_after,
                           "second-factor attempts for this account are paused")
    return Problem("locked", detail="second-factor attempts for this account are locked until "
                   "an administrator unlocks it")


class Regulator:
    def __init__(self, store: Store, clock: Callable[[], float], throttle: ThrottleSettings,
                 audit: Audit, on_lock: Callable[[str], None] = lambda user: None) -> None:
        self.store = store
        self.clock = clock
        self.t = throttle
        self.audit = audit
        self.on_lock = on_lock  # a lockout revokes tokens: caches of them must forget

    def lock_for(self, failures: int, now: float) -> tuple[float, bool] | None:
        """The lock the ``failures``-th consecutive failure starts, if any: every
        ``lock_after`` failures lock for ``lock_base``, doubling up to ``lock_max``, and
        ``hard_lock_after`` failures lock until an administrator unlocks (NIST SP 800-63B
        §5.2.2)."""
        t = self.t
        if failures >= t.hard_lock_after:
            return now, True
        if failures % t.lock_after == 0:
            return now + min(t.lock_base * 2 ** (failures // t.lock_after - 1), t.lock_max), False
        return None

    async def check(self, user: str) -> None:
        """429 while the user is locked."""
        lock = await self.store.user_lock(user)
        if lock.hard:
            METRICS.throttled("locked")
            raise locked(None)
        now = self.clock()
        if lock.locked_until > now:
            METRICS.throttled("locked")
            raise locked(lock.locked_until - now)

    async def failure(self, user: str, **audit: object) -> None:
        """Count a wrong code against the user; 429 once that locks the user."""
        now = self.clock()
        failures = await self.store.add_failure(user)
        await self.audit.emit("failed", user=user, failures=failures, **audit)
        lock = self.lock_for(failures, now)
        if lock is None:
            return
        until, hard = lock
        await self.store.lock_user(user, until, hard)
        self.on_lock(user)
        await self.audit.emit("locked", user=user, hard=hard, until=None if hard else round(until))
        METRICS.lockout(hard)
        raise locked(None if hard else until - now)

    async def success(self, user: str) -> None:
        await self.store.reset_failures(user)

    async def start_challenge(self, user: str) -> None:
        """Count a challenge (429 beyond ``challenges_per_window``)."""
        t, now = self.t, self.clock()
        if await self.store.hit(f"challenges:{user}", t.challenge_window, now) > \
                t.challenges_per_window:
            METRICS.throttled("challenges")
            raise retry_later("too-many-challenges", window_of(now, t.challenge_window)[1] - now,
                              "too many challenges were requested for this account")

    async def give_back_challenge(self, user: str) -> None:
        """A challenge that was not created after all (a refused resend, a failed send)."""
        await self.store.hit(f"challenges:{user}", self.t.challenge_window, self.clock(), -1)

    def _sends(self, user: str, enrolment: bool) -> tuple[str, int, str]:
        """The counter, its limit and how to name it. Codes sent to an address being
        enrolled have their own counter: a first session that enrols two channels and
        then answers an all_of rule must not run out of challenge sends, and enrolment,
        where the address is still unproven, keeps a cap of its own against SMS pumping."""
        if enrolment:
            return (f"enrolment-sends:{user}", self.t.enrolment_sends_per_window,
                    "to addresses being enrolled ")
        return f"sends:{user}", self.t.sends_per_window, ""

    async def start_send(self, user: str, *, enrolment: bool = False) -> None:
        """Count a delivered code (429 beyond ``sends_per_window``, or beyond
        ``enrolment_sends_per_window`` for an ``enrolment``): SMS pumping costs money."""
        t, now = self.t, self.clock()
        key, limit, what = self._sends(user, enrolment)
        if await self.store.hit(key, t.send_window, now) > limit:
            await self.store.hit(key, t.send_window, now, -1)
            METRICS.throttled("enrolment_sends" if enrolment else "sends")
            raise retry_later("too-many-sends", window_of(now, t.send_window)[1] - now,
                              f"at most {limit} codes are sent {what}per "
                              f"{int(t.send_window // 60)} minutes")

    async def give_back_send(self, user: str, *, enrolment: bool = False) -> None:
        """A send the channel refused is not counted."""
        key, _limit, _what = self._sends(user, enrolment)
        await self.store.hit(key, self.t.send_window, self.clock(), -1)
