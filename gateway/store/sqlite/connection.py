"""One SQLite file in WAL mode: its thread, call timeout, migrations and instance marker.

Every call runs on one dedicated thread, never on the event loop, and is bounded by
``timeout``: a file held locked by another process, or a stalled disk, makes the call
fail with StoreUnavailable (503, fail closed) instead of stalling unrelated requests.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from gateway.metrics import METRICS

from ..base import StoreMissing, StoreUnavailable

# Applied in order, each once; a database records how many it has seen. Never edit one
# that has shipped: add the next.
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


def guard(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a synchronous SQLite call on the store's thread within its timeout; translate
    its errors once, here."""
    inner = _translated(fn)
    op = fn.__name__  # the operation's name in the metrics

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store: Connection = args[0]  # type: ignore[assignment]
        if store.executor is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        started = METRICS.clock()
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
                METRICS.store_error("sqlite", op, "timeout")
                raise StoreUnavailable("sqlite: timed out") from None
            raise
        except StoreUnavailable:
            METRICS.store_error("sqlite", op, "error")
            raise
        finally:
            timer.cancel()
            METRICS.store("sqlite", op, started)
    return wrapper


def marker_path(path: str) -> Path:
    """Written beside the database when it is created: a missing database with a marker
    means the store was lost, not that this is the first start."""
    return Path(path + ".instance")


class Connection:
    """One connection, used from one dedicated thread; the concerns' mixins build on it."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self.db: sqlite3.Connection | None = None
        self.instance_id = ""
        self.executor: ThreadPoolExecutor | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file opened

    @property
    def conn(self) -> sqlite3.Connection:
        if self.db is None:
            raise StoreUnavailable("store is not open")
        return self.db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
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
            self._wal(db)
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
            st = os.stat(self.path)
            self._file = (st.st_dev, st.st_ino)

    def _wal(self, db: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at
        # once, without the busy timeout, while another process is opening the same new
        # file (processes starting together on a new store): retry within the timeout.
        deadline = time.monotonic() + self.timeout * 0.8
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _instance(self) -> str:
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
            if row is not None:
                return str(row[0])
            value = secrets.token_urlsafe(9)
            c.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?)", (value,))
            return value

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if row is None:
                c.execute("INSERT INTO schema_version (version) VALUES (0)")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (number,))

    async def ready(self) -> list[str]:
        """The file opened is still the file at the path, and a fresh connection reads the
        same store from it: a file deleted or replaced under a running gateway keeps
        answering this process (WAL) while its state is being lost."""
        executor = self.executor
        if executor is None or self.db is None:
            return ["store: not open"]
        if self.path == ":memory:":
            return []
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                return await loop.run_in_executor(None, self._check_file)
        except TimeoutError:
            return [f"store: {self.path} did not answer within {self.timeout:g}s"]

    def _check_file(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except OSError:
            return [f"store: {self.path} is missing (deleted under the running gateway: "
                    "restore it from a backup and restart)"]
        if (st.st_dev, st.st_ino) != self._file:
            return [f"store: {self.path} was replaced under the running gateway (restart it "
                    "to use the new file)"]
        try:
            fresh = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                    timeout=self.timeout * 0.8)
            try:
                row = fresh.execute(
                    "SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
            finally:
                fresh.close()
        except sqlite3.Error as exc:
            return [f"store: {self.path} does not answer a new connection "
                    f"({exc.__class__.__name__})"]
        if row is None or row[0] != self.instance_id:
            return [f"store: {self.path} holds another store than the one opened"]
        return []

    async def close(self) -> None:
        executor, self.executor = self.executor, None
        if self.db is not None and executor is not None:
            db, self.db = self.db, None
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        if executor is not None:
            executor.shutdown(wait=False)
