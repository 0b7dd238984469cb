"""A pool of PostgreSQL connections: the URL's own parameters, the call timeout, error
translation, the migrations (under an advisory lock) and the store's instance id.

Every call acquires a connection and runs within ``timeout`` seconds, acquiring included:
a server that stops answering, refuses connections or fails makes the call raise
StoreUnavailable (503, fail closed) instead of stalling unrelated requests. A connection
that timed out or broke is dropped, never handed back to the pool, so the pool connects
afresh on a later call: the store recovers by itself when the server comes back.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from gateway.metrics import METRICS

from ..base import StoreMissing, StoreUnavailable

# Applied in order, each once, each recorded in schema_version. Never edit one that has
# shipped: add the next. Tables live in the connection's search_path (a schema of their
# own with ``?search_path=stepgate``).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE factors (
        id TEXT PRIMARY KEY, user_name TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
        label TEXT NOT NULL, data TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION, counter BIGINT NOT NULL DEFAULT -1);
    CREATE INDEX factors_user ON factors (user_name);
    CREATE TABLE recovery_codes (
        user_name TEXT NOT NULL, hash TEXT NOT NULL, used_at DOUBLE PRECISION,
        PRIMARY KEY (user_name, hash));
    CREATE TABLE challenges (
        id TEXT PRIMARY KEY, user_name TEXT NOT NULL, ticket_nonce TEXT NOT NULL,
        ticket TEXT NOT NULL, factor TEXT NOT NULL, factor_id TEXT, state TEXT NOT NULL,
        attempts_left INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL, ticket_expires_at DOUBLE PRECISION NOT NULL,
        code_hash TEXT, sent_at DOUBLE PRECISION);
    CREATE INDEX challenges_ticket ON challenges (user_name, ticket_nonce);
    CREATE TABLE token_uses (
        jti TEXT PRIMARY KEY, committed INTEGER NOT NULL, reserved INTEGER NOT NULL,
        max_uses INTEGER NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX token_uses_expiry ON token_uses (expires_at);
    CREATE TABLE user_generations (user_name TEXT PRIMARY KEY, generation BIGINT NOT NULL);
    CREATE TABLE user_locks (
        user_name TEXT PRIMARY KEY, failures INTEGER NOT NULL,
        locked_until DOUBLE PRECISION NOT NULL, hard BOOLEAN NOT NULL);
    CREATE TABLE counters (
        key TEXT PRIMARY KEY, count BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX counters_expiry ON counters (expires_at);
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,
        user_name TEXT, event TEXT NOT NULL);
    CREATE INDEX audit_user_ts ON audit (user_name, ts);
    """,
]

# Every table of a store at the newest version: a store missing one of them is damaged.
TABLES = ("schema_version", "meta", "factors", "recovery_codes", "challenges", "token_uses",
          "user_generations", "user_locks", "counters", "audit")

MARKERS = {"schema_version", "meta"}

# pg_advisory_xact_lock key held while a store is created or migrated ("Stepgate" in
# ASCII): replicas starting together on one database take turns. Advisory locks are per
# database, so stores in other databases never wait for it.
MIGRATION_LOCK = int.from_bytes(b"Stepgate", "big")

# Query parameters the store reads itself; every other one goes to asyncpg (sslmode,
# sslrootcert, ..., and server settings such as search_path or statement_timeout).
OWN_PARAMETERS = ("pool_min", "pool_max", "password_env", "password_file")


@dataclass(frozen=True)
class Target:
    """Where to connect and how: the URL without the store's own parameters."""

    dsn: str
    pool_min: int = 1
    pool_max: int = 10
    password: Callable[[], str] | None = None
    settings: dict[str, str] = field(default_factory=dict)


def _size(name: str, value: str, least: int) -> int:
    try:
        size = int(value)
    except ValueError:
        size = least - 1
    if size < least:
        raise ValueError(f"store URL: {name} must be an integer of at least {least}, "
                         f"found {value!r}")
    return size


def _from_env(name: str) -> Callable[[], str]:
    def password() -> str:
        value = os.environ.get(name)
        if value is None:
            raise StoreUnavailable(f"postgresql: password_env names {name}, which is not set")
        return value
    return password


def _from_file(path: str) -> Callable[[], str]:
    # Read on every new connection, so a rotated secret is picked up without a restart.
    def password() -> str:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise StoreUnavailable(f"postgresql: cannot read password_file {path}: "
                                   f"{exc.strerror}") from None
    return password


def parse_url(url: str) -> Target:
    """Split the store's own query parameters off ``url``; ValueError names a bad one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in OWN_PARAMETERS}
    rest = [(k, v) for k, v in query if k not in OWN_PARAMETERS]
    pool_min = _size("pool_min", own.get("pool_min", "1"), 0)
    pool_max = _size("pool_max", own.get("pool_max", "10"), 1)
    if pool_min > pool_max:
        raise ValueError(f"store URL: pool_min ({pool_min}) exceeds pool_max ({pool_max})")
    sources = [k for k in ("password_env", "password_file") if own.get(k)]
    if parts.password is not None:
        sources.insert(0, "a password in the URL")
    if len(sources) > 1:
        raise ValueError(f"store URL: give the password one way, found {' and '.join(sources)}")
    password = (_from_env(own["password_env"]) if own.get("password_env")
                else _from_file(own["password_file"]) if own.get("password_file") else None)
    settings = {} if any(k == "application_name" for k, _ in rest) else {
        "application_name": "stepgate"}
    return Target(urlunsplit(parts._replace(query=urlencode(rest))), pool_min, pool_max,
                  password, settings)


@asynccontextmanager
async def transaction(con: Any) -> AsyncIterator[None]:
    """BEGIN ... COMMIT on ``con``. An error the server reported rolls back here; any other
    (a timeout, a broken connection) leaves the connection to be dropped, which rolls back
    on the server without waiting for an answer that may never come."""
    await con.execute("BEGIN")
    try:
        yield
    except asyncpg.PostgresError:
        await con.execute("ROLLBACK")
        raise
    await con.execute("COMMIT")


async def _keep(con: Any) -> None:
    """The pool's reset on release: nothing to undo. Calls change no session state (no
    SET, LISTEN or session lock), so the default reset's round trip would be wasted."""


S = TypeVar("S", bound="Connection")
P = ParamSpec("P")
R = TypeVar("R")


def guard(fn: Callable[Concatenate[S, Any, P], Awaitable[R]]
          ) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """A method taking a connection after ``self`` becomes one run on a pooled connection
    within the store's timeout, its errors translated once, in ``Connection.run``."""
    op = fn.__name__  # the operation's name in the metrics

    @functools.wraps(fn)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(lambda con: fn(self, con, *args, **kwargs), op)
    return wrapper


class Connection:
    """The pool and the store's identity; the concerns' mixins build on it."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.target = parse_url(url)
        self.timeout = timeout
        self.pool: Any = None
        self.instance_id = ""

    async def run(self, op: Callable[[Any], Awaitable[R]], name: str = "query") -> R:
        """``op`` on a pooled connection within the timeout; ``name`` names it in the
        metrics."""
        pool = self.pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        con: Any = None
        clean = False
        started = METRICS.clock()
        try:
            async with asyncio.timeout(self.timeout):
                con = await pool.acquire()
                result = await op(con)
            clean = True
            return result
        except TimeoutError:
            METRICS.store_error("postgresql", name, "timeout")
            raise StoreUnavailable("postgresql: timed out") from None
        except asyncpg.PostgresError as exc:
            clean = True  # the server answered: the connection is usable
            METRICS.store_error("postgresql", name, "error")
            raise StoreUnavailable(f"postgresql: {exc.__class__.__name__}: {exc}") from exc
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            METRICS.store_error("postgresql", name, "error")
            raise StoreUnavailable(f"postgresql: {exc.__class__.__name__}: {exc}") from exc
        finally:
            METRICS.store("postgresql", name, started)
            if con is not None:
                await _give_back(pool, con, clean)

    async def ready(self) -> list[str]:
        """A real round trip: the store's id read back from the database."""
        try:
            found = await self.run(lambda con: con.fetchval(
                "SELECT value FROM meta WHERE key = 'instance_id'"), "ready")
        except StoreUnavailable as exc:
            return [f"store: PostgreSQL does not answer ({exc})"]
        if found != self.instance_id:
            return ["store: the PostgreSQL database holds another store than the one opened"]
        return []

    async def open(self, *, create: bool = False) -> None:
        """Connect, then create or migrate the store under the migration lock. An empty
        database becomes a store (the first start); a database that was a store and lost
        part of it (tables dropped, its identity deleted) is refused with StoreMissing
        unless ``create`` says to start afresh (`stepgate store init`), which drops what
        is left: starting afresh would forget every enrolment and every spent token."""
        if self.pool is None:
            self.pool = await self._connect()
        try:
            self.instance_id = await self.run(lambda con: self._prepare(con, create), "open")
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> Any:
        t = self.target
        pool = asyncpg.create_pool(
            t.dsn, min_size=t.pool_min, max_size=t.pool_max, password=t.password,
            server_settings=t.settings or None, timeout=self.timeout, reset=_keep)
        try:
            async with asyncio.timeout(self.timeout):
                return await pool
        except TimeoutError:
            raise StoreUnavailable("postgresql: cannot connect: timed out") from None
        except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError) as exc:  # ValueError: a URL asyncpg cannot use
            raise StoreUnavailable(
                f"postgresql: cannot connect: {exc.__class__.__name__}: {exc}") from exc

    async def _prepare(self, con: Any, create: bool) -> str:
        async with transaction(con):
            await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            found = await _tables(con)
            # A database that has been a store keeps its bookkeeping tables, or at least
            # all of the others. Otherwise it is new (a table of another application in the
            # way fails CREATE TABLE, and nothing of it is touched).
            if found & MARKERS or found >= set(TABLES) - MARKERS:
                instance = await _current(con, found)
                if instance is not None and not set(TABLES) - await _tables(con):
                    return instance
                if not create:
                    missing = ", ".join(sorted(set(TABLES) - found)) or "its instance id"
                    database = await con.fetchval("SELECT current_database()")
                    raise StoreMissing(
                        f"the store in database {database} is damaged ({missing} missing), "
                        "but a store was created there before: restore the database from a "
                        "backup, or run 'stepgate store init --config FILE' to drop what is "
                        "left and start with an empty store (every enrolment is lost)")
                await con.execute("DROP TABLE IF EXISTS " + ", ".join(TABLES) + " CASCADE")
            await con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                              "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            await _migrate(con, 0)
            instance = secrets.token_urlsafe(9)
            await con.execute("INSERT INTO meta (key, value) VALUES ('instance_id', $1)",
                              instance)
            return instance

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await pool.close()
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError):
            pool.terminate()


async def _give_back(pool: Any, con: Any, clean: bool) -> None:
    """Return ``con`` to the pool, or drop it when its state is unknown (a timeout, a
    broken connection, a caller that went away): the pool connects a new one."""
    try:
        if not clean or con.is_in_transaction():
            con.terminate()
        await pool.release(con)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
        pass  # lost already (the pool took it back when it closed)


async def _tables(con: Any) -> set[str]:
    rows = await con.fetch("SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT "
                           "NULL", list(TABLES))
    return {r[0] for r in rows}


async def _current(con: Any, found: set[str]) -> str | None:
    """The instance id of a store, migrated to the newest version; None when the store has
    lost its identity or its version."""
    if not {"schema_version", "meta"} <= found:
        return None
    version = await con.fetchval("SELECT max(version) FROM schema_version")
    instance = await con.fetchval("SELECT value FROM meta WHERE key = 'instance_id'")
    if version is None or instance is None:
        return None
    if version > len(MIGRATIONS):
        raise StoreUnavailable(f"postgresql: the store is at schema version {version}, newer "
                               f"than this gateway knows ({len(MIGRATIONS)}): upgrade it")
    await _migrate(con, version)
    return str(instance)


async def _migrate(con: Any, version: int) -> None:
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await con.execute(script)
        await con.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
