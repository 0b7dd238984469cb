"""The embedded store: one SQLite file in WAL mode, versioned migrations applied at start.

Every call runs on one dedicated thread, never on the event loop, and is bounded by
``timeout``: a file held locked by another process, or a stalled disk, makes the call
fail with StoreUnavailable (503, fail closed) instead of stalling unrelated requests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import sqlite3
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from .base import (
    ChallengeRecord,
    FactorRecord,
    ReserveResult,
    StoreMissing,
    StoreUnavailable,
    UserLock,
)

MIGRATIONS: list[str] = [
    """
    CREATE TABLE factors (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
        label TEXT NOT NULL, secret TEXT NOT NULL, created_at REAL NOT NULL,
        last_used_at REAL, last_step INTEGER NOT NULL DEFAULT -1);
    CREATE INDEX factors_user ON factors(user);
    CREATE TABLE recovery_codes (
        user TEXT NOT NULL, hash TEXT NOT NULL, used_at REAL, PRIMARY KEY (user, hash));
    CREATE TABLE challenges (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, ticket_nonce TEXT NOT NULL, ticket TEXT NOT NULL,
        factor TEXT NOT NULL, factor_id TEXT, state TEXT NOT NULL, attempts_left INTEGER NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, ticket_expires_at REAL NOT NULL,
        code_hash TEXT, sent_at REAL);
    CREATE INDEX challenges_ticket ON challenges(user, ticket_nonce);
    CREATE TABLE token_uses (
        jti TEXT PRIMARY KEY, committed INTEGER NOT NULL, reserved INTEGER NOT NULL,
        max_uses INTEGER NOT NULL, expires_at REAL NOT NULL, hold_until REAL NOT NULL);
    CREATE TABLE user_locks (
        user TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until REAL NOT NULL,
        hard INTEGER NOT NULL);
    CREATE TABLE counters (
        key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires_at REAL NOT NULL);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, user TEXT, event TEXT NOT NULL);
    CREATE INDEX audit_user_ts ON audit(user, ts);
    """,
    # The store's identity (tokens name it, so a fresh store refuses tokens spent in a lost
    # one) and per-user token generations (bumped to revoke a user's outstanding tokens).
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE user_generations (user TEXT PRIMARY KEY, generation INTEGER NOT NULL);
    CREATE INDEX token_uses_expiry ON token_uses(expires_at);
    """,
    # Factor data the factor owns instead of TOTP-shaped columns for every factor: the
    # sealed secret becomes one member of a JSON document (still sealed with its old
    # associated data, so it opens as before) and last_step a generic monotonic counter.
    # Before this version a factor was either TOTP (a seed) or a delivered channel (an
    # address). RENAME COLUMN needs SQLite 3.25, json_object the JSON1 functions (built in
    # since 3.38, and in most builds before).
    """
    ALTER TABLE factors RENAME COLUMN secret TO data;
    ALTER TABLE factors RENAME COLUMN last_step TO counter;
    UPDATE factors SET data = json_object(CASE type WHEN 'totp' THEN 'secret' ELSE 'address' END,
                                          data);
    """,
]
# Factor columns by name, never by position: a column a later migration adds cannot shift
# the others.
_FACTOR_COLUMNS = ("id", "user", "type", "status", "label", "data", "created_at", "last_used_at",
                   "counter")
_INSERT_FACTOR = ("INSERT INTO factors (id, user, type, status, label, data, created_at, "
                  "last_used_at, counter) VALUES (:id, :user, :type, :status, :label, :data, "
                  ":created_at, :last_used_at, :counter)")
_SELECT_FACTORS = ("SELECT id, user, type, status, label, data, created_at, last_used_at, counter "
                   "FROM factors WHERE user = ? ORDER BY created_at, id")
SWEEP_EVERY = 60.0

P = ParamSpec("P")
R = TypeVar("R")


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc.__class__.__name__}") from exc
    return call


def _guard(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a synchronous SQLite call on the store's thread within its timeout; translate
    its errors once, here."""
    inner = _translated(fn)

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store: SQLiteStore = args[0]  # type: ignore[assignment]
        if store.executor is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(store.executor, functools.partial(inner, *args, **kwargs))
        # One timer handle, not asyncio.wait_for (a task and callbacks per call: several
        # times dearer on the verify path); the thread itself is freed by busy_timeout.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            future.cancel()
        timer = loop.call_later(store.timeout, expire)
        try:
            return await future
        except asyncio.CancelledError:
            if expired:
                raise StoreUnavailable("sqlite: timed out") from None
            raise
        finally:
            timer.cancel()
    return wrapper


def marker_path(path: str) -> Path:
    """Written beside the database when it is created: a missing database with a marker
    means the store was lost, not that this is the first start."""
    return Path(path + ".instance")


class SQLiteStore:
    """One connection, used from one dedicated thread."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self.db: sqlite3.Connection | None = None
        self.instance_id = ""
        self.executor: ThreadPoolExecutor | None = None
        self._last_sweep = 0.0

    @property
    def conn(self) -> sqlite3.Connection:
        if self.db is None:
            raise StoreUnavailable("store is not open")
        return self.db

    @contextmanager
    def _tx(self) -> Any:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    async def open(self, *, create: bool = False) -> None:
        """Open (and migrate) the database. A missing file is created on the first start
        only, or when ``create`` says so (`stepgate store init`): a missing file whose
        marker remains means the store was lost, and starting afresh would forget every
        enrolment and every spent token, so that refuses with StoreMissing."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepgate-sqlite")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._open, create)

    def _open(self, create: bool) -> None:
        memory = self.path == ":memory:"
        marker = marker_path(self.path)
        if not memory and not Path(self.path).exists() and marker.exists() and not create:
            raise StoreMissing(
                f"the store {self.path} is missing, but a store was created there before "
                f"({marker} remains): restore the file from a backup, or run 'stepgate store "
                "init --config FILE' to start with an empty store (every enrolment is lost)")
        try:
            if not memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=self.timeout * 0.8)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Below the call timeout, so the thread is free again when a caller gives up.
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 800)}")
            self.db = db
            self._migrate()
            self.instance_id = self._instance()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: cannot open {self.path}: {exc}") from exc
        if not memory:
            marker.write_text(self.instance_id + "\n", encoding="utf-8")

    def _instance(self) -> str:
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
            if row is not None:
                return str(row[0])
            value = secrets.token_urlsafe(9)
            c.execute("INSERT INTO meta VALUES ('instance_id', ?)", (value,))
            return value

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if row is None:
                c.execute("INSERT INTO schema_version VALUES (0)")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (number,))

    async def close(self) -> None:
        executor, self.executor = self.executor, None
        if self.db is not None and executor is not None:
            db, self.db = self.db, None
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        if executor is not None:
            executor.shutdown(wait=False)

    # factors ---------------------------------------------------------------

    @_guard
    def add_factor(self, f: FactorRecord) -> None:
        self.conn.execute(_INSERT_FACTOR, {c: getattr(f, c) for c in _FACTOR_COLUMNS})

    @_guard
    def factors(self, user: str) -> list[FactorRecord]:
        rows = self.conn.execute(_SELECT_FACTORS, (user,)).fetchall()
        return [FactorRecord(**dict(zip(_FACTOR_COLUMNS, row, strict=True))) for row in rows]

    @_guard
    def activate_factor(self, user: str, factor_id: str) -> bool:
        cur = self.conn.execute("UPDATE factors SET status = 'active' WHERE id = ? AND user = ? "
                                "AND status = 'pending'", (factor_id, user))
        return cur.rowcount == 1

    @_guard
    def delete_factor(self, user: str, factor_id: str) -> bool:
        cur = self.conn.execute("DELETE FROM factors WHERE id = ? AND user = ?", (factor_id, user))
        return cur.rowcount == 1

    @_guard
    def delete_user(self, user: str) -> int:
        with self._tx() as c:
            n = c.execute("DELETE FROM factors WHERE user = ?", (user,)).rowcount
            n += c.execute("DELETE FROM recovery_codes WHERE user = ?", (user,)).rowcount
            c.execute("DELETE FROM user_locks WHERE user = ?", (user,))
            self._bump(c, user)
        return int(n)

    @_guard
    def advance_counter(self, factor_id: str, value: int, now: float) -> bool:
        cur = self.conn.execute(
            "UPDATE factors SET counter = ?, last_used_at = ? WHERE id = ? AND counter < ?",
            (value, now, factor_id, value))
        return cur.rowcount == 1

    @_guard
    def touch_factor(self, factor_id: str, now: float) -> None:
        self.conn.execute("UPDATE factors SET last_used_at = ? WHERE id = ?", (now, factor_id))

    # recovery codes ---------------------------------------------------------

    @_guard
    def replace_recovery_codes(self, user: str, hashes: list[str], now: float) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
            c.executemany("INSERT INTO recovery_codes VALUES (?, ?, NULL)",
                          [(user, h) for h in hashes])

    @_guard
    def consume_recovery_code(self, user: str, code_hash: str, now: float) -> bool:
        cur = self.conn.execute("UPDATE recovery_codes SET used_at = ? WHERE user = ? AND hash = ? "
                                "AND used_at IS NULL", (now, user, code_hash))
        return cur.rowcount == 1

    @_guard
    def recovery_codes_left(self, user: str) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM recovery_codes WHERE user = ? AND "
                                "used_at IS NULL", (user,)).fetchone()
        return int(row[0])

    # challenges -------------------------------------------------------------

    @_guard
    def add_challenge(self, ch: ChallengeRecord) -> None:
        self.conn.execute("INSERT INTO challenges VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", astuple(ch))

    @_guard
    def challenge(self, challenge_id: str) -> ChallengeRecord | None:
        row = self.conn.execute("SELECT * FROM challenges WHERE id = ?", (challenge_id,)).fetchone()
        return ChallengeRecord(*row) if row else None

    @_guard
    def fail_challenge(self, challenge_id: str) -> int:
        with self._tx() as c:
            c.execute("UPDATE challenges SET attempts_left = MAX(attempts_left - 1, 0) "
                      "WHERE id = ? AND state = 'pending'", (challenge_id,))
            c.execute("UPDATE challenges SET state = 'failed' WHERE id = ? AND state = 'pending' "
                      "AND attempts_left = 0", (challenge_id,))
            row = c.execute("SELECT attempts_left FROM challenges WHERE id = ?",
                            (challenge_id,)).fetchone()
        return int(row[0]) if row else 0

    @_guard
    def verify_challenge(self, challenge_id: str) -> bool:
        cur = self.conn.execute("UPDATE challenges SET state = 'verified' WHERE id = ? AND "
                                "state = 'pending'", (challenge_id,))
        return cur.rowcount == 1

    @_guard
    def verified_factors(self, user: str, ticket_nonce: str) -> set[str]:
        rows = self.conn.execute("SELECT factor FROM challenges WHERE user = ? AND ticket_nonce = ? "
                                 "AND state = 'verified'", (user, ticket_nonce)).fetchall()
        return {r[0] for r in rows}

    @_guard
    def latest_challenge(self, user: str, ticket_nonce: str,
                         factor: str) -> ChallengeRecord | None:
        row = self.conn.execute(
            "SELECT * FROM challenges WHERE user = ? AND ticket_nonce = ? AND factor = ? AND "
            "state = 'pending' ORDER BY created_at DESC LIMIT 1",
            (user, ticket_nonce, factor)).fetchone()
        return ChallengeRecord(*row) if row else None

    @_guard
    def void_challenge(self, challenge_id: str) -> None:
        self.conn.execute("UPDATE challenges SET state = 'expired' WHERE id = ? AND "
                          "state = 'pending'", (challenge_id,))

    # token uses ---------------------------------------------------------------

    @_guard
    def reserve_use(self, jti: str, max_uses: int, expires_at: float, now: float) -> ReserveResult:
        # A reservation never lapses before the token expires: a request that may have
        # reached the upstream holds its use until it is settled (docs/protocol.md).
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

    @_guard
    def commit_use(self, jti: str) -> None:
        self.conn.execute("UPDATE token_uses SET committed = committed + 1, "
                          "reserved = MAX(reserved - 1, 0) WHERE jti = ?", (jti,))

    @_guard
    def release_use(self, jti: str) -> None:
        self.conn.execute("UPDATE token_uses SET reserved = MAX(reserved - 1, 0) WHERE jti = ?",
                          (jti,))

    # throttling -----------------------------------------------------------------

    @_guard
    def user_lock(self, user: str) -> UserLock:
        row = self.conn.execute("SELECT failures, locked_until, hard FROM user_locks WHERE user = ?",
                                (user,)).fetchone()
        return UserLock(row[0], row[1], bool(row[2])) if row else UserLock(0, 0.0, False)

    @_guard
    def add_failure(self, user: str) -> int:
        with self._tx() as c:
            c.execute("INSERT INTO user_locks (user, failures, locked_until, hard) VALUES "
                      "(?, 1, 0, 0) ON CONFLICT(user) DO UPDATE SET failures = failures + 1",
                      (user,))
            row = c.execute("SELECT failures FROM user_locks WHERE user = ?", (user,)).fetchone()
        return int(row[0])

    @_guard
    def lock_user(self, user: str, until: float, hard: bool) -> None:
        with self._tx() as c:
            c.execute("UPDATE user_locks SET locked_until = MAX(locked_until, ?), "
                      "hard = MAX(hard, ?) WHERE user = ?", (until, int(hard), user))
            self._bump(c, user)  # a lockout revokes the user's outstanding tokens

    @_guard
    def reset_failures(self, user: str) -> None:
        self.conn.execute("DELETE FROM user_locks WHERE user = ?", (user,))

    @_guard
    def unlock(self, user: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM user_locks WHERE user = ?", (user,))
            self._bump(c, user)

    # token generations ------------------------------------------------------------

    @staticmethod
    def _bump(c: sqlite3.Connection, user: str) -> int:
        c.execute("INSERT INTO user_generations VALUES (?, 1) ON CONFLICT(user) DO UPDATE SET "
                  "generation = generation + 1", (user,))
        row = c.execute("SELECT generation FROM user_generations WHERE user = ?",
                        (user,)).fetchone()
        return int(row[0])

    @_guard
    def generation(self, user: str) -> int:
        row = self.conn.execute("SELECT generation FROM user_generations WHERE user = ?",
                                (user,)).fetchone()
        return int(row[0]) if row else 0

    @_guard
    def bump_generation(self, user: str) -> int:
        with self._tx() as c:
            return self._bump(c, user)

    @_guard
    def hit(self, key: str, window: float, now: float, amount: int = 1) -> int:
        bucket = f"{key}@{int(now // window)}"
        with self._tx() as c:
            c.execute("DELETE FROM counters WHERE expires_at < ?", (now,))
            c.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                      "count = MAX(count + ?, 0)",
                      (bucket, max(amount, 0), (int(now // window) + 1) * window, amount))
            row = c.execute("SELECT count FROM counters WHERE key = ?", (bucket,)).fetchone()
        return int(row[0])

    # audit ------------------------------------------------------------------------

    @_guard
    def append_audit(self, events: list[dict[str, Any]]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO audit (ts, user, event) VALUES (?, ?, ?)",
                          [(e.get("ts", 0.0), e.get("user"), json.dumps(e)) for e in events])

    @_guard
    def audit(self, user: str | None, since: float | None, until: float | None,
              limit: int) -> list[dict[str, Any]]:
        sql = "SELECT event FROM audit WHERE 1=1"
        args: list[Any] = []
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if until is not None:
            sql += " AND ts <= ?"
            args.append(until)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [json.loads(r[0]) for r in self.conn.execute(sql, args).fetchall()][::-1]
