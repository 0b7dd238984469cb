"""Enrolled factors and recovery-code hashes in SQLite."""

from __future__ import annotations

from ..base import FactorRecord
from .connection import Connection, guard
from .hot import bump

# Factor columns by name, never by position: a column a later migration adds cannot shift
# the others.
_FACTOR_COLUMNS = ("id", "user", "type", "status", "label", "data", "created_at", "last_used_at",
                   "counter")
_INSERT_FACTOR = ("INSERT INTO factors (id, user, type, status, label, data, created_at, "
                  "last_used_at, counter) VALUES (:id, :user, :type, :status, :label, :data, "
                  ":created_at, :last_used_at, :counter)")
_SELECT_FACTORS = ("SELECT id, user, type, status, label, data, created_at, last_used_at, counter "
                   "FROM factors WHERE user = ? ORDER BY created_at, id")


class Factors(Connection):
    """The FactorStore concern."""

    @guard
    def add_factor(self, f: FactorRecord) -> None:
        self.conn.execute(_INSERT_FACTOR, {c: getattr(f, c) for c in _FACTOR_COLUMNS})

    @guard
    def factors(self, user: str) -> list[FactorRecord]:
        rows = self.conn.execute(_SELECT_FACTORS, (user,)).fetchall()
        return [FactorRecord(**dict(zip(_FACTOR_COLUMNS, row, strict=True))) for row in rows]

    @guard
    def activate_factor(self, user: str, factor_id: str) -> bool:
        cur = self.conn.execute("UPDATE factors SET status = 'active' WHERE id = ? AND user = ? "
                                "AND status = 'pending'", (factor_id, user))
        return cur.rowcount == 1

    @guard
    def delete_factor(self, user: str, factor_id: str) -> bool:
        cur = self.conn.execute("DELETE FROM factors WHERE id = ? AND user = ?", (factor_id, user))
        return cur.rowcount == 1

    @guard
    def delete_user(self, user: str) -> int:
        with self._tx() as c:
            n = c.execute("DELETE FROM factors WHERE user = ?", (user,)).rowcount
            n += c.execute("DELETE FROM recovery_codes WHERE user = ?", (user,)).rowcount
            c.execute("DELETE FROM user_locks WHERE user = ?", (user,))
            bump(c, user)
        return int(n)

    @guard
    def advance_counter(self, factor_id: str, value: int, now: float) -> bool:
        # One conditional UPDATE: of two processes accepting the same TOTP step at once,
        # only one matches ``counter < value``.
        cur = self.conn.execute(
            "UPDATE factors SET counter = ?, last_used_at = ? WHERE id = ? AND counter < ?",
            (value, now, factor_id, value))
        return cur.rowcount == 1

    @guard
    def touch_factor(self, factor_id: str, now: float) -> None:
        self.conn.execute("UPDATE factors SET last_used_at = ? WHERE id = ?", (now, factor_id))

    @guard
    def replace_recovery_codes(self, user: str, hashes: list[str], now: float) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
            c.executemany("INSERT INTO recovery_codes (user, hash, used_at) VALUES (?, ?, NULL)",
                          [(user, h) for h in hashes])

    @guard
    def consume_recovery_code(self, user: str, code_hash: str, now: float) -> bool:
        cur = self.conn.execute("UPDATE recovery_codes SET used_at = ? WHERE user = ? AND hash = ? "
                                "AND used_at IS NULL", (now, user, code_hash))
        return cur.rowcount == 1

    @guard
    def users(self) -> list[str]:
        rows = self.conn.execute("SELECT user FROM factors UNION SELECT user FROM recovery_codes "
                                 "ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows]

    @guard
    def recovery_code_hashes(self, user: str) -> list[str]:
        rows = self.conn.execute("SELECT hash FROM recovery_codes WHERE user = ? AND used_at IS "
                                 "NULL ORDER BY hash", (user,)).fetchall()
        return [str(r[0]) for r in rows]

    @guard
    def recovery_codes_left(self, user: str) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM recovery_codes WHERE user = ? AND "
                                "used_at IS NULL", (user,)).fetchone()
        return int(row[0])
