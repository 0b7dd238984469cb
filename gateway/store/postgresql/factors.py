"""Enrolled factors and recovery-code hashes in PostgreSQL."""

from __future__ import annotations

from typing import Any

from ..base import FactorRecord
from .connection import Connection, guard, transaction
from .hot import BUMP

# Columns by name, never by position: a column a later migration adds cannot shift the
# others. Sorting by COLLATE "C" orders as SQLite and Python do (by code point), whatever
# the database's collation.
_INSERT_FACTOR = ("INSERT INTO factors (id, user_name, type, status, label, data, created_at, "
                  "last_used_at, counter) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
_SELECT_FACTORS = ('SELECT id, user_name AS "user", type, status, label, data, created_at, '
                   "last_used_at, counter FROM factors WHERE user_name = $1 "
                   'ORDER BY created_at, id COLLATE "C"')
# One statement: the deletions and the revocation commit together or not at all.
_DELETE_USER = (
    "WITH f AS (DELETE FROM factors WHERE user_name = $1 RETURNING 1), "  # noqa: S608 - constants
    "r AS (DELETE FROM recovery_codes WHERE user_name = $1 RETURNING 1), "
    "l AS (DELETE FROM user_locks WHERE user_name = $1), "
    f"g AS ({BUMP}) "
    "SELECT (SELECT count(*) FROM f) + (SELECT count(*) FROM r)")


class Factors(Connection):
    """The FactorStore concern."""

    @guard
    async def add_factor(self, con: Any, f: FactorRecord) -> None:
        await con.execute(_INSERT_FACTOR, f.id, f.user, f.type, f.status, f.label, f.data,
                          f.created_at, f.last_used_at, f.counter)

    @guard
    async def factors(self, con: Any, user: str) -> list[FactorRecord]:
        return [FactorRecord(**dict(row)) for row in await con.fetch(_SELECT_FACTORS, user)]

    @guard
    async def activate_factor(self, con: Any, user: str, factor_id: str) -> bool:
        return bool(await con.fetchval(
            "UPDATE factors SET status = 'active' WHERE id = $1 AND user_name = $2 AND "
            "status = 'pending' RETURNING true", factor_id, user))

    @guard
    async def delete_factor(self, con: Any, user: str, factor_id: str) -> bool:
        return bool(await con.fetchval(
            "DELETE FROM factors WHERE id = $1 AND user_name = $2 RETURNING true",
            factor_id, user))

    @guard
    async def delete_user(self, con: Any, user: str) -> int:
        return int(await con.fetchval(_DELETE_USER, user))

    @guard
    async def advance_counter(self, con: Any, factor_id: str, value: int, now: float) -> bool:
        # One conditional UPDATE: of two replicas accepting the same TOTP step at once, the
        # second waits for the first's row lock, then no longer matches ``counter < value``.
        return bool(await con.fetchval(
            "UPDATE factors SET counter = $1, last_used_at = $2 WHERE id = $3 AND counter < $1 "
            "RETURNING true", value, now, factor_id))

    @guard
    async def touch_factor(self, con: Any, factor_id: str, now: float) -> None:
        await con.execute("UPDATE factors SET last_used_at = $1 WHERE id = $2", now, factor_id)

    @guard
    async def replace_recovery_codes(self, con: Any, user: str, hashes: list[str],
                                     now: float) -> None:
        async with transaction(con):
            await con.execute("DELETE FROM recovery_codes WHERE user_name = $1", user)
            await con.execute("INSERT INTO recovery_codes (user_name, hash) "
                              "SELECT $1, unnest($2::text[])", user, hashes)

    @guard
    async def consume_recovery_code(self, con: Any, user: str, code_hash: str,
                                    now: float) -> bool:
        return bool(await con.fetchval(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_name = $2 AND hash = $3 AND "
            "used_at IS NULL RETURNING true", now, user, code_hash))

    @guard
    async def users(self, con: Any) -> list[str]:
        rows = await con.fetch("SELECT u FROM (SELECT user_name FROM factors UNION SELECT "
                               'user_name FROM recovery_codes) AS s (u) ORDER BY u COLLATE "C"')
        return [str(r[0]) for r in rows]

    @guard
    async def recovery_code_hashes(self, con: Any, user: str) -> list[str]:
        rows = await con.fetch("SELECT hash FROM recovery_codes WHERE user_name = $1 AND "
                               'used_at IS NULL ORDER BY hash COLLATE "C"', user)
        return [str(r[0]) for r in rows]

    @guard
    async def recovery_codes_left(self, con: Any, user: str) -> int:
        return int(await con.fetchval("SELECT count(*) FROM recovery_codes WHERE user_name = $1 "
                                      "AND used_at IS NULL", user))
