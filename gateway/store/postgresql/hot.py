"""The hot state in PostgreSQL: token uses and generations, failures, lockouts, windowed
counts. Each decision is one statement, atomic on its own: a concurrent caller waits for
the row's lock and then sees the decided row (READ COMMITTED re-checks the condition)."""

from __future__ import annotations

from typing import Any

from gateway.primitives import window_of

from ..base import ReserveResult, UserLock
from .connection import Connection, guard

# Spent uses of expired tokens, and counts of past windows, are swept at most this often
# (seconds of the callers' clock) by each handle.
SWEEP_EVERY = 60.0

# Revoke the user's outstanding tokens; a CTE in the statements that lock, unlock or
# delete a user, so the revocation commits with the change.
BUMP = ("INSERT INTO user_generations (user_name, generation) VALUES ($1, 1) "
        "ON CONFLICT (user_name) DO UPDATE SET generation = user_generations.generation + 1 "
        "RETURNING generation")
# A reservation is taken only while committed + reserved < max_uses. A use of a new token
# inserts its row; concurrent first uses meet in the primary key and all but one take the
# update path, which re-checks the condition on the row the winner wrote.
_RESERVE = ("INSERT INTO token_uses AS t (jti, committed, reserved, max_uses, expires_at) "
            "VALUES ($1, 0, 1, $2, $3) ON CONFLICT (jti) DO UPDATE SET reserved = t.reserved + 1 "
            "WHERE t.committed + t.reserved < $2 RETURNING true")
_FAILURE = ("INSERT INTO user_locks (user_name, failures, locked_until, hard) "
            "VALUES ($1, 1, 0, false) ON CONFLICT (user_name) "
            "DO UPDATE SET failures = user_locks.failures + 1 RETURNING failures")
_LOCK = ("WITH l AS (UPDATE user_locks SET locked_until = GREATEST(locked_until, $2), "  # noqa: S608
         f"hard = hard OR $3 WHERE user_name = $1) {BUMP}")
_UNLOCK = f"WITH l AS (DELETE FROM user_locks WHERE user_name = $1) {BUMP}"  # noqa: S608
_HIT = ("INSERT INTO counters AS c (key, count, expires_at) "
        "VALUES ($1, GREATEST($2::bigint, 0), $3) ON CONFLICT (key) "
        "DO UPDATE SET count = GREATEST(c.count + $2::bigint, 0) RETURNING count")


class TokenUses(Connection):
    """The TokenUseStore concern."""

    _last_sweep: float = 0.0

    @guard
    async def reserve_use(self, con: Any, jti: str, max_uses: int, expires_at: float,
                          now: float) -> ReserveResult:
        # A reservation never lapses before the token expires: a request that may have
        # reached the upstream holds its use until it is settled (docs/protocol.md).
        if now - self._last_sweep > SWEEP_EVERY:
            self._last_sweep = now
            await con.execute("DELETE FROM token_uses WHERE expires_at < $1", now)
        if await con.fetchval(_RESERVE, jti, max_uses, expires_at):
            return "ok"
        # Refused: only which refusal is left to tell. Uses committed since the refusal can
        # only turn 'busy' into 'used', which was true by then.
        committed = await con.fetchval("SELECT committed FROM token_uses WHERE jti = $1", jti)
        return "busy" if committed is not None and committed < max_uses else "used"

    @guard
    async def commit_use(self, con: Any, jti: str) -> None:
        await con.execute("UPDATE token_uses SET committed = committed + 1, "
                          "reserved = GREATEST(reserved - 1, 0) WHERE jti = $1", jti)

    @guard
    async def release_use(self, con: Any, jti: str) -> None:
        await con.execute("UPDATE token_uses SET reserved = GREATEST(reserved - 1, 0) "
                          "WHERE jti = $1", jti)

    @guard
    async def generation(self, con: Any, user: str) -> int:
        value = await con.fetchval("SELECT generation FROM user_generations WHERE user_name = $1",
                                   user)
        return int(value or 0)

    @guard
    async def bump_generation(self, con: Any, user: str) -> int:
        return int(await con.fetchval(BUMP, user))


class Counters(Connection):
    """The CounterStore concern."""

    _last_counter_sweep: float = 0.0

    @guard
    async def user_lock(self, con: Any, user: str) -> UserLock:
        row = await con.fetchrow("SELECT failures, locked_until, hard FROM user_locks "
                                 "WHERE user_name = $1", user)
        return UserLock(row[0], row[1], row[2]) if row else UserLock(0, 0.0, False)

    @guard
    async def add_failure(self, con: Any, user: str) -> int:
        # The count the increment produced: two replicas failing at once see 1 and 2, never
        # 1 twice (a lockout threshold must not be skipped).
        return int(await con.fetchval(_FAILURE, user))

    @guard
    async def lock_user(self, con: Any, user: str, until: float, hard: bool) -> None:
        await con.execute(_LOCK, user, until, hard)  # a lockout revokes the user's tokens

    @guard
    async def reset_failures(self, con: Any, user: str) -> None:
        await con.execute("DELETE FROM user_locks WHERE user_name = $1", user)

    @guard
    async def unlock(self, con: Any, user: str) -> None:
        await con.execute(_UNLOCK, user)

    @guard
    async def hit(self, con: Any, key: str, window: float, now: float, amount: int = 1) -> int:
        number, ends = window_of(now, window)
        if now - self._last_counter_sweep > SWEEP_EVERY:
            self._last_counter_sweep = now
            await con.execute("DELETE FROM counters WHERE expires_at < $1", now)
        return int(await con.fetchval(_HIT, f"{key}@{number}", amount, ends))
