"""Challenges and the factors each ticket has verified, in SQLite."""

from __future__ import annotations

from typing import Any

from ..base import ChallengeRecord
from .connection import Connection, guard

# Columns by name, never by position, as for the factors: a column a later migration adds
# cannot shift the others.
_COLUMNS = ("id", "user", "ticket_nonce", "ticket", "factor", "factor_id", "state",
            "attempts_left", "created_at", "expires_at", "ticket_expires_at", "code_hash",
            "sent_at")
_INSERT = ("INSERT INTO challenges (id, user, ticket_nonce, ticket, factor, factor_id, state, "
           "attempts_left, created_at, expires_at, ticket_expires_at, code_hash, sent_at) "
           "VALUES (:id, :user, :ticket_nonce, :ticket, :factor, :factor_id, :state, "
           ":attempts_left, :created_at, :expires_at, :ticket_expires_at, :code_hash, :sent_at)")
_SELECT = ("SELECT id, user, ticket_nonce, ticket, factor, factor_id, state, attempts_left, "
           "created_at, expires_at, ticket_expires_at, code_hash, sent_at FROM challenges ")


def _record(row: Any) -> ChallengeRecord | None:
    return ChallengeRecord(**dict(zip(_COLUMNS, row, strict=True))) if row else None


class Challenges(Connection):
    """The ChallengeStore concern."""

    @guard
    def add_challenge(self, ch: ChallengeRecord) -> None:
        self.conn.execute(_INSERT, {c: getattr(ch, c) for c in _COLUMNS})

    @guard
    def challenge(self, challenge_id: str) -> ChallengeRecord | None:
        return _record(self.conn.execute(_SELECT + "WHERE id = ?", (challenge_id,)).fetchone())

    @guard
    def fail_challenge(self, challenge_id: str) -> int:
        with self._tx() as c:
            c.execute("UPDATE challenges SET attempts_left = MAX(attempts_left - 1, 0) "
                      "WHERE id = ? AND state = 'pending'", (challenge_id,))
            c.execute("UPDATE challenges SET state = 'failed' WHERE id = ? AND state = 'pending' "
                      "AND attempts_left = 0", (challenge_id,))
            row = c.execute("SELECT attempts_left FROM challenges WHERE id = ?",
                            (challenge_id,)).fetchone()
        return int(row[0]) if row else 0

    @guard
    def verify_challenge(self, challenge_id: str) -> bool:
        cur = self.conn.execute("UPDATE challenges SET state = 'verified' WHERE id = ? AND "
                                "state = 'pending'", (challenge_id,))
        return cur.rowcount == 1

    @guard
    def verified_factors(self, user: str, ticket_nonce: str) -> set[str]:
        rows = self.conn.execute("SELECT factor FROM challenges WHERE user = ? AND ticket_nonce = ? "
                                 "AND state = 'verified'", (user, ticket_nonce)).fetchall()
        return {r[0] for r in rows}

    @guard
    def latest_challenge(self, user: str, ticket_nonce: str,
                         factor: str) -> ChallengeRecord | None:
        return _record(self.conn.execute(
            _SELECT + "WHERE user = ? AND ticket_nonce = ? AND factor = ? AND "
            "state = 'pending' ORDER BY created_at DESC LIMIT 1",
            (user, ticket_nonce, factor)).fetchone())

    @guard
    def void_challenge(self, challenge_id: str) -> None:
        self.conn.execute("UPDATE challenges SET state = 'expired' WHERE id = ? AND "
                          "state = 'pending'", (challenge_id,))
