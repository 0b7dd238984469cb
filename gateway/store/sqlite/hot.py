"""The hot state in SQLite: token uses and generations, failures, lockouts, windowed counts."""

from __future__ import annotations

import sqlite3

from gateway.primitives import window_of

from ..base import ReserveResult, UserLock
from .connection import Connection, guard

# Spent uses of expired tokens are swept at most this often (seconds of the callers'
# clock), inside a reservation's transaction.
SWEEP_EVERY = 60.0


def bump(c: sqlite3.Connection, user: str) -> int:
    """Revoke the user's outstanding tokens, inside the caller's transaction: deleting a
    user and locking one revoke in the same transaction that changes them."""
    c.execute("INSERT INTO user_generations (user, generation) VALUES (?, 1) "
              "ON CONFLICT(user) DO UPDATE SET generation = generation + 1", (user,))
    row = c.execute("SELECT generation FROM user_generations WHERE user = ?", (user,)).fetchone()
    return int(row[0])


class TokenUses(Connection):
    """The TokenUseStore concern."""

    _last_sweep: float = 0.0

    @guard
    def reserve_use(self, jti: str, max_uses: int, expires_at: float, now: float) -> ReserveResult:
        # A reservation never lapses before the token expires: a request that may have
        # reached the upstream holds its use until it is settled (docs/protocol.md). The
        # read and the write share one IMMEDIATE transaction, so of several processes
        # reserving the last use of one token only one sees it free.
        with self._tx() as c:
            if now - self._last_sweep > SWEEP_EVERY:
                self._last_sweep = now
                c.execute("DELETE FROM token_uses WHERE expires_at < ?", (now,))
            row = c.execute("SELECT committed, reserved FROM token_uses WHERE jti = ?",
                            (jti,)).fetchone()
            if row is None:
                c.execute("INSERT INTO token_uses (jti, committed, reserved, max_uses, expires_at, "
                          "hold_until) VALUES (?, 0, 1, ?, ?, ?)",
                          (jti, max_uses, expires_at, expires_at))
                return "ok"
            committed, reserved = row
            if committed >= max_uses:
                return "used"
            if committed + reserved >= max_uses:
                return "busy"
            c.execute("UPDATE token_uses SET reserved = reserved + 1 WHERE jti = ?", (jti,))
            return "ok"

    @guard
    def commit_use(self, jti: str) -> None:
        self.conn.execute("UPDATE token_uses SET committed = committed + 1, "
                          "reserved = MAX(reserved - 1, 0) WHERE jti = ?", (jti,))

    @guard
    def release_use(self, jti: str) -> None:
        self.conn.execute("UPDATE token_uses SET reserved = MAX(reserved - 1, 0) WHERE jti = ?",
                          (jti,))

    @guard
    def generation(self, user: str) -> int:
        row = self.conn.execute("SELECT generation FROM user_generations WHERE user = ?",
                                (user,)).fetchone()
        return int(row[0]) if row else 0

    @guard
    def bump_generation(self, user: str) -> int:
        with self._tx() as c:
            return bump(c, user)


class Counters(Connection):
    """The CounterStore concern."""

    @guard
    def user_lock(self, user: str) -> UserLock:
        row = self.conn.execute("SELECT failures, locked_until, hard FROM user_locks WHERE user = ?",
                                (user,)).fetchone()
        return UserLock(row[0], row[1], bool(row[2])) if row else UserLock(0, 0.0, False)

    @guard
    def add_failure(self, user: str) -> int:
        # The count read back in the transaction that raised it: two processes failing at
        # once see 1 and 2, never 1 twice (a lockout threshold must not be skipped).
        with self._tx() as c:
            c.execute("INSERT INTO user_locks (user, failures, locked_until, hard) VALUES "
                      "(?, 1, 0, 0) ON CONFLICT(user) DO UPDATE SET failures = failures + 1",
                      (user,))
            row = c.execute("SELECT failures FROM user_locks WHERE user = ?", (user,)).fetchone()
        return int(row[0])

    @guard
    def lock_user(self, user: str, until: float, hard: bool) -> None:
        with self._tx() as c:
            c.execute("UPDATE user_locks SET locked_until = MAX(locked_until, ?), "
                      "hard = MAX(hard, ?) WHERE user = ?", (until, int(hard), user))
            bump(c, user)  # a lockout revokes the user's outstanding tokens

    @guard
    def reset_failures(self, user: str) -> None:
        self.conn.execute("DELETE FROM user_locks WHERE user = ?", (user,))

    @guard
    def unlock(self, user: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM user_locks WHERE user = ?", (user,))
            bump(c, user)

    @guard
    def hit(self, key: str, window: float, now: float, amount: int = 1) -> int:
        number, ends = window_of(now, window)
        bucket = f"{key}@{number}"
        with self._tx() as c:
            c.execute("DELETE FROM counters WHERE expires_at < ?", (now,))
            c.execute("INSERT INTO counters (key, count, expires_at) VALUES (?, ?, ?) "
                      "ON CONFLICT(key) DO UPDATE SET count = MAX(count + ?, 0)",
                      (bucket, max(amount, 0), ends, amount))
            row = c.execute("SELECT count FROM counters WHERE key = ?", (bucket,)).fetchone()
        return int(row[0])
