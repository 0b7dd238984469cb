"""Challenges and the factors each ticket has verified, in PostgreSQL."""

from __future__ import annotations

from typing import Any

from ..base import ChallengeRecord
from .connection import Connection, guard

_INSERT = ("INSERT INTO challenges (id, user_name, ticket_nonce, ticket, factor, factor_id, "
           "state, attempts_left, created_at, expires_at, ticket_expires_at, code_hash, sent_at) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
# Columns by name, never by position, as for the factors.
_SELECT = ('SELECT id, user_name AS "user", ticket_nonce, ticket, factor, factor_id, state, '
           "attempts_left, created_at, expires_at, ticket_expires_at, code_hash, sent_at "
           "FROM challenges ")
# The attempt spent and the challenge failed at zero in one conditional UPDATE: a second
# replica failing the same challenge waits for the row, then sees the spent attempt.
_FAIL = ("UPDATE challenges SET attempts_left = GREATEST(attempts_left - 1, 0), "
         "state = CASE WHEN attempts_left <= 1 THEN 'failed' ELSE state END "
         "WHERE id = $1 AND state = 'pending' RETURNING attempts_left")


def _record(row: Any) -> ChallengeRecord | None:
    return ChallengeRecord(**dict(row)) if row is not None else None


class Challenges(Connection):
    """The ChallengeStore concern."""

    @guard
    async def add_challenge(self, con: Any, ch: ChallengeRecord) -> None:
        await con.execute(_INSERT, ch.id, ch.user, ch.ticket_nonce, ch.ticket, ch.factor,
                          ch.factor_id, ch.state, ch.attempts_left, ch.created_at,
                          ch.expires_at, ch.ticket_expires_at, ch.code_hash, ch.sent_at)

    @guard
    async def challenge(self, con: Any, challenge_id: str) -> ChallengeRecord | None:
        return _record(await con.fetchrow(_SELECT + "WHERE id = $1", challenge_id))

    @guard
    async def fail_challenge(self, con: Any, challenge_id: str) -> int:
        left = await con.fetchval(_FAIL, challenge_id)
        if left is None:  # not pending (or unknown): nothing spent, say what is left
            left = await con.fetchval("SELECT attempts_left FROM challenges WHERE id = $1",
                                      challenge_id)
        return int(left or 0)

    @guard
    async def verify_challenge(self, con: Any, challenge_id: str) -> bool:
        return bool(await con.fetchval(
            "UPDATE challenges SET state = 'verified' WHERE id = $1 AND state = 'pending' "
            "RETURNING true", challenge_id))

    @guard
    async def verified_factors(self, con: Any, user: str, ticket_nonce: str) -> set[str]:
        rows = await con.fetch("SELECT factor FROM challenges WHERE user_name = $1 AND "
                               "ticket_nonce = $2 AND state = 'verified'", user, ticket_nonce)
        return {r[0] for r in rows}

    @guard
    async def latest_challenge(self, con: Any, user: str, ticket_nonce: str,
                               factor: str) -> ChallengeRecord | None:
        return _record(await con.fetchrow(
            _SELECT + "WHERE user_name = $1 AND ticket_nonce = $2 AND factor = $3 AND "
            "state = 'pending' ORDER BY created_at DESC LIMIT 1", user, ticket_nonce, factor))

    @guard
    async def void_challenge(self, con: Any, challenge_id: str) -> None:
        await con.execute("UPDATE challenges SET state = 'expired' WHERE id = $1 AND "
                          "state = 'pending'", challenge_id)
