"""The hot state in Redis: token uses and generations, failures, lockouts, windowed counts.

Every decision is one Lua script (or one command), so of several gateway processes sharing
one Redis only one wins a token's last use, and failure counts are never skipped. Scripts
run with EVALSHA and are loaded again when the server answers NOSCRIPT (after a restart).

Keys, all under ``prefix`` so one Redis serves several gateways, and each with a TTL so
nothing grows without bound:

``{prefix}epoch``
    A random value made when absent; see "Lost state" below. Refreshed (EPOCH_TTL) by every
    reservation and generation read: it lapses only when the gateway has been idle far
    longer than any token lives, and then refuses only tokens that have expired anyway.
``{prefix}use:{jti}``
    Hash ``c`` (committed uses), ``r`` (reserved): lives until the token expires plus
    TOKEN_MARGIN (clocks of several gateways disagree a little).
``{prefix}gen:{user}``
    The user's token generation (bumped to revoke); GENERATION_TTL after its last bump or
    read. A generation that lapses reads 0 again, which is safe because GENERATION_TTL is
    far longer than any token lives (15 minutes at most): every token issued under the old
    numbering has expired before the numbering can restart.
``{prefix}lock:{user}``
    Hash ``f`` (consecutive failures), ``u`` (locked until), ``h`` (hard): FAILURE_TTL after
    the last failure or lockout, or until a longer soft lock ends. A hard lock holds until
    an administrator unlocks; its key is kept for HARD_LOCK_TTL and refreshed whenever the
    lock is read (every attempt of the locked user), so it only lapses for a user nobody
    has tried to sign in as for that long.
``{prefix}hit:{key}@{window number}``
    A fixed-window count: lives until its window ends plus HIT_MARGIN.

Lost state: Redis without persistence forgets everything when it restarts (and an evicting
``maxmemory-policy`` forgets keys at will: run with ``noeviction``). Forgotten token uses
would let a spent token be used again, so the store detects the loss instead: the epoch
key is read at ``open`` and checked inside every reservation and generation read; a
missing or different epoch makes a new one (the first process to notice makes it, the
others adopt it), and the call fails with StoreUnavailable (503). The combined store folds
the epoch into its ``instance_id``, which tickets and tokens carry, so every token issued
before the loss is refused from then on. What a Redis restart costs users: one more factor
prompt (and a 503 for the request that noticed). What it costs the operator: failure counts
and lockouts, hard ones included, start again from zero. Run Redis with AOF
(``appendonly yes``) to keep all of it across restarts.

URLs: ``redis://`` or ``rediss://`` (TLS), the database number as the path, the password
in the URL or named by ``password_env=VAR`` or ``password_file=PATH`` (read at ``open``,
without the file's final newline). Every call is bounded by ``timeout``; a server that
fails, refuses or stops answering raises StoreUnavailable, and a later call reconnects: no
reopening after an outage. Redis 5 or later (scripts replicated by their effects),
standalone or behind a proxy that keeps one server (a reservation touches its token's key
and the epoch, which a cluster would place in different slots).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.metrics import METRICS
from gateway.primitives import window_of

from .base import ReserveResult, StoreUnavailable, UserLock

log = logging.getLogger(__name__)

DAY = 86400.0
EPOCH_TTL = 30 * DAY
TOKEN_MARGIN = 300.0
GENERATION_TTL = 7 * DAY
FAILURE_TTL = 30 * DAY
HARD_LOCK_TTL = 365 * DAY
HIT_MARGIN = 60.0
MAX_CONNECTIONS = 64  # per process

SCHEMES = ("redis", "rediss")
_PASSWORD_PARAMETERS = ("password_env", "password_file")

T = TypeVar("T")

# KEYS: use, epoch. ARGV: the epoch this handle knows, max uses, TTL of a new use key (ms),
# EPOCH_TTL (ms). A reservation never lapses before its key does: the request may have
# reached the upstream (see the SQLite store).
_RESERVE = """
local e = redis.call('GET', KEYS[2])
if e ~= ARGV[1] then return 'lost' end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) / 2 then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local v = redis.call('HMGET', KEYS[1], 'c', 'r')
if not v[1] then
  redis.call('HSET', KEYS[1], 'c', 0, 'r', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'ok'
end
local c, r, max = tonumber(v[1]), tonumber(v[2]), tonumber(ARGV[2])
if c >= max then return 'used' end
if c + r >= max then return 'busy' end
redis.call('HINCRBY', KEYS[1], 'r', 1)
return 'ok'
"""

# KEYS: use. ARGV: 1 to commit the reserved use, 0 to release it. An unknown token stays
# unknown (no key without a TTL).
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'c', 1) end
if tonumber(redis.call('HGET', KEYS[1], 'r')) > 0 then redis.call('HINCRBY', KEYS[1], 'r', -1) end
return 1
"""

# KEYS: generation, epoch. ARGV: the known epoch, GENERATION_TTL (ms), EPOCH_TTL (ms).
# -1 when the epoch is not the known one (the caller decides what a loss means).
_GENERATION = """
local e = redis.call('GET', KEYS[2])
if e ~= ARGV[1] then return -1 end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) / 2 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local g = redis.call('GET', KEYS[1])
if not g then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) / 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return tonumber(g)
"""

# KEYS: generation. ARGV: GENERATION_TTL (ms).
_BUMP = """
local g = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return g
"""

# KEYS: lock. ARGV: the TTL it keeps at least (ms). Never shortens a hard lock's TTL.
_FAILURE = """
local f = redis.call('HINCRBY', KEYS[1], 'f', 1)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return f
"""

# KEYS: lock, generation. ARGV: until, hard (0/1), the lock's TTL (ms), GENERATION_TTL (ms).
# Like the SQLite store, a user without failures gets no lock, but is revoked all the same.
# ``until`` is kept as the caller wrote it (Lua numbers would round it).
_LOCK = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local u = redis.call('HGET', KEYS[1], 'u')
  if not u or tonumber(ARGV[1]) > tonumber(u) then redis.call('HSET', KEYS[1], 'u', ARGV[1]) end
  if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'h', '1') end
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
local g = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return g
"""

# KEYS: lock. ARGV: HARD_LOCK_TTL (ms). A hard lock read is a hard lock still wanted.
_USER_LOCK = """
local v = redis.call('HMGET', KEYS[1], 'f', 'u', 'h')
if v[3] == '1' and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) / 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return v
"""

# KEYS: lock, generation. ARGV: GENERATION_TTL (ms). Unlocking and deleting a user both
# forget the lockout and revoke, in one step.
_FORGET = """
redis.call('DEL', KEYS[1])
local g = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return g
"""

# KEYS: bucket. ARGV: amount, TTL (ms). Never below zero; the TTL is set once, when the
# window's key is made.
_HIT = """
local c = redis.call('INCRBY', KEYS[1], ARGV[1])
if c < 0 then
  redis.call('INCRBY', KEYS[1], -c)
  c = 0
end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return c
"""

# KEYS: epoch. ARGV: a new value, EPOCH_TTL (ms). The epoch there is, made when absent.
_EPOCH = """
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) / 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return e
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL redis-py is given (without ``password_env``/``password_file``) and those
    parameters; ValueError for another scheme or a parameter given twice."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"expected a redis:// or rediss:// URL, found {parts.scheme!r}")
    kept: list[tuple[str, str]] = []
    found: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _PASSWORD_PARAMETERS:
            if name in found:
                raise ValueError(f"parameter {name!r} given twice")
            found[name] = value
        else:
            kept.append((name, value))
    if len(found) + (parts.password is not None) > 1:
        raise ValueError("expected one source of the Redis password: the URL, password_env "
                         "or password_file")
    return urlunsplit(parts._replace(query=urlencode(kept))), found


def _password(found: dict[str, str]) -> str | None:
    if "password_env" in found:
        value = os.environ.get(found["password_env"])
        if not value:
            raise StoreUnavailable(f"redis: the environment variable {found['password_env']} "
                                   "(password_env) is unset or empty")
        return value
    if "password_file" in found:
        try:
            return Path(found["password_file"]).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreUnavailable(f"redis: cannot read the password file "
                                   f"{found['password_file']}: {exc}") from exc
    return None


class RedisHotStore:
    """The TokenUseStore and CounterStore concerns on one Redis (see the module docstring
    for the keys, their TTLs and what a Redis that lost its state costs)."""

    def __init__(self, url: str, timeout: float = 2.0, prefix: str = "stepgate:") -> None:
        self.url, self._password_source = split_url(url)
        self.timeout = timeout
        self.prefix = prefix
        self.epoch = ""
        self.client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._epoch_key = f"{prefix}epoch"
        # Called (with no argument) when this handle adopts a new epoch at run time.
        self.on_epoch_change: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self, *, create: bool = False) -> None:
        """Connect and read (or make) the epoch; StoreUnavailable when Redis does not
        answer. ``create`` changes nothing: an absent epoch is always made."""
        if self.client is None:
            # A bounded pool: a burst of requests waits for a connection (within the
            # timeout) instead of opening, and keeping, one each.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, timeout=self.timeout,
                password=_password(self._password_source), decode_responses=True,
                socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                # No retries inside redis-py (they back off for seconds, and repeat a timed
                # out call that may have run): ``_call`` decides what is repeated.
                retry=Retry(NoBackoff(), 0))
            client = aioredis.Redis.from_pool(pool)
            self._scripts = {name: client.register_script(src) for name, src in (
                ("reserve", _RESERVE), ("settle", _SETTLE), ("generation", _GENERATION),
                ("bump", _BUMP), ("failure", _FAILURE), ("lock", _LOCK),
                ("user_lock", _USER_LOCK), ("forget", _FORGET), ("hit", _HIT),
                ("epoch", _EPOCH))}
            self.client = client
        try:
            self.epoch = await self._current_epoch()
        except StoreUnavailable:
            await self.close()
            raise

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass  # closing a connection to a server that is gone

    async def ready(self) -> list[str]:
        try:
            await self._call(lambda c: c.ping(), name="ping")
        except StoreUnavailable as exc:
            return [f"redis: does not answer ({exc})"]
        return []

    async def _call(self, op: Callable[[aioredis.Redis], Awaitable[T]], repeat: bool = True,
                    name: str = "call") -> T:
        """``op`` within the timeout, its errors translated; ``name`` names it in the
        metrics."""
        client = self.client
        if client is None:
            raise StoreUnavailable("redis store is not open")
        started = METRICS.clock()
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await op(client)
                except RedisConnectionError:
                    # A server that closed one connection (it restarted) closed them all:
                    # drop the idle ones and try once more on a new connection. Had the
                    # call run before the connection broke, running it again only errs on
                    # the closed side (one more failure, use or revocation counted), except
                    # a release, which would free another request's use: never repeated.
                    await client.connection_pool.disconnect(inuse_connections=False)
                    if not repeat:
                        raise
                    return await op(client)
        except TimeoutError as exc:  # redis-py's TimeoutError is a RedisError, not this one
            METRICS.store_error("redis", name, "timeout")
            raise StoreUnavailable("redis: timed out") from exc
        except (RedisError, OSError) as exc:
            METRICS.store_error("redis", name, "error")
            raise StoreUnavailable(f"redis: {exc.__class__.__name__}") from exc
        finally:
            METRICS.store("redis", name, started)

    async def _script(self, name: str, keys: list[str], args: list[Any],
                      repeat: bool = True) -> Any:
        script = self._scripts.get(name)
        return await self._call(lambda c: script(keys, args, client=c),  # type: ignore[misc]
                                repeat, name)

    async def _current_epoch(self) -> str:
        value = await self._script("epoch", [self._epoch_key],
                                   [secrets.token_urlsafe(6), _ms(EPOCH_TTL)])
        return str(value)

    async def _lost(self) -> StoreUnavailable:
        """Redis no longer holds the epoch this handle knows: its state was lost (or
        another process noticed first). Adopt the epoch there is, or make one."""
        old, self.epoch = self.epoch, await self._current_epoch()
        log.warning("redis lost its state (epoch %s is now %s): tokens issued before are "
                    "refused, failure counts and lockouts start again", old, self.epoch)
        if self.on_epoch_change is not None:
            self.on_epoch_change()
        return StoreUnavailable("redis lost its state (restarted without persistence?); "
                                "tokens issued before are refused")

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    # ------------------------------------------------------------------ TokenUseStore

    async def reserve_use(self, jti: str, max_uses: int, expires_at: float,
                          now: float) -> ReserveResult:
        ttl = _ms(max(expires_at - now, 0.0) + TOKEN_MARGIN)
        result = await self._script("reserve", [self._key("use", jti), self._epoch_key],
                                    [self.epoch, max_uses, ttl, _ms(EPOCH_TTL)])
        if result == "lost":
            raise await self._lost()
        assert result in ("ok", "busy", "used")
        return result  # type: ignore[no-any-return]

    async def commit_use(self, jti: str) -> None:
        await self._script("settle", [self._key("use", jti)], [1])

    async def release_use(self, jti: str) -> None:
        await self._script("settle", [self._key("use", jti)], [0], repeat=False)

    async def generation(self, user: str) -> int:
        value = int(await self._script("generation", [self._key("gen", user), self._epoch_key],
                                       [self.epoch, _ms(GENERATION_TTL), _ms(EPOCH_TTL)]))
        if value < 0:
            # The generations were lost with the rest: a revoked token would read as
            # current. The caller refuses this one; the new epoch refuses the others.
            raise await self._lost()
        return value

    async def bump_generation(self, user: str) -> int:
        return int(await self._script("bump", [self._key("gen", user)], [_ms(GENERATION_TTL)]))

    # ------------------------------------------------------------------ CounterStore

    async def user_lock(self, user: str) -> UserLock:
        f, u, h = await self._script("user_lock", [self._key("lock", user)],
                                     [_ms(HARD_LOCK_TTL)])
        return UserLock(int(f or 0), float(u or 0.0), h == "1")

    async def add_failure(self, user: str) -> int:
        return int(await self._script("failure", [self._key("lock", user)], [_ms(FAILURE_TTL)]))

    async def lock_user(self, user: str, until: float, hard: bool) -> None:
        # ``until`` is on the caller's clock; the TTL only needs to outlast it on ours.
        keep = HARD_LOCK_TTL if hard else max(FAILURE_TTL, until - time.time() + HIT_MARGIN)
        await self._script("lock", [self._key("lock", user), self._key("gen", user)],
                           [repr(float(until)), int(hard), _ms(keep), _ms(GENERATION_TTL)])

    async def reset_failures(self, user: str) -> None:
        key = self._key("lock", user)
        await self._call(lambda c: c.delete(key), name="reset_failures")

    async def unlock(self, user: str) -> None:
        await self.forget_user(user)

    async def forget_user(self, user: str) -> int:
        """Forget the user's failures and lockout and revoke their tokens (unlocking, and
        deleting the user); the new generation."""
        return int(await self._script("forget", [self._key("lock", user), self._key("gen", user)],
                                      [_ms(GENERATION_TTL)]))

    async def hit(self, key: str, window: float, now: float, amount: int = 1) -> int:
        number, ends = window_of(now, window)
        ttl = _ms(max(ends - now, 0.0) + HIT_MARGIN)
        return int(await self._script("hit", [self._key("hit", f"{key}@{number}")],
                                      [amount, ttl]))
