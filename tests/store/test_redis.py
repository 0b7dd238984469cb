"""Redis specifics beyond the contract: every key has a TTL, prefixes keep gateways apart,
a Redis that lost its state changes the store's identity, and a server that stops
answering (or is stopped) fails calls within the timeout and recovers without a reopen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from redis import asyncio as aioredis

from gateway.decision.tokens import Signer
from gateway.keys import generate_signing_key
from gateway.store import StoreUnavailable
from gateway.store.composite import Combined
from gateway.store.redis import (
    FAILURE_TTL,
    GENERATION_TTL,
    HARD_LOCK_TTL,
    TOKEN_MARGIN,
    RedisHotStore,
    split_url,
)
from tests.servers import redis
from tests.store.backend_redis import combined, durable, hot, name_of

pytestmark = pytest.mark.anyio

TIMEOUT = 0.5
T = TypeVar("T")


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis().url(0), decode_responses=True)
    yield client
    await client.aclose()


async def ttls(raw: aioredis.Redis, prefix: str) -> dict[str, float]:
    """Every key under ``prefix`` and its TTL in seconds (-1: none)."""
    out: dict[str, float] = {}
    async for key in raw.scan_iter(match=f"{prefix}*", count=1000):
        ms = await raw.pttl(key)
        out[key] = ms / 1000 if ms >= 0 else float(ms)
    return out


async def eventually(call: Callable[[], Awaitable[T]], seconds: float = 5.0) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- TTLs and prefixes

async def test_every_key_has_a_ttl_after_a_workload(tmp_path: Path, raw: aioredis.Redis) -> None:
    s = combined(tmp_path)
    await s.open()
    try:
        now = time.time()
        assert await s.reserve_use("j1", 1, now + 120, now) == "ok"
        await s.commit_use("j1")
        assert await s.reserve_use("j2", 3, now + 120, now) == "ok"
        await s.release_use("j2")
        await s.commit_use("never-reserved")
        await s.release_use("never-reserved")
        await s.bump_generation("alice")
        assert await s.generation("alice") == 1
        assert await s.generation("nobody") == 0
        for user in ("soft", "hard", "unlocked", "reset", "deleted"):
            await s.add_failure(user)
        await s.lock_user("soft", now + 300, False)
        await s.lock_user("hard", 0.0, True)
        await s.lock_user("never-failed", now + 300, False)
        await s.unlock("unlocked")
        await s.reset_failures("reset")
        await s.delete_user("deleted")
        assert await s.hit("sends:alice", 600, now) == 1
        assert await s.hit("taken-back", 600, now, -1) == 0
        assert (await s.user_lock("hard")).hard

        prefix = f"{name_of(tmp_path)}:"
        keys = await ttls(raw, prefix)
        assert [k for k, ttl in keys.items() if ttl < 0] == []
        assert set(keys) == {prefix + k for k in (
            "epoch", "use:j1", "use:j2", "gen:alice", "gen:soft", "gen:hard", "gen:never-failed",
            "gen:unlocked", "gen:deleted", "lock:soft", "lock:hard",
            f"hit:sends:alice@{int(now // 600)}", f"hit:taken-back@{int(now // 600)}")}
        # A token's uses outlive it by the margin only; windows end with their window.
        assert 120 < keys[prefix + "use:j1"] <= 120 + TOKEN_MARGIN
        assert keys[prefix + f"hit:sends:alice@{int(now // 600)}"] <= 600 + 60
        assert keys[prefix + "gen:alice"] > GENERATION_TTL - 60
        assert FAILURE_TTL - 60 < keys[prefix + "lock:soft"] <= FAILURE_TTL
        assert keys[prefix + "lock:hard"] > HARD_LOCK_TTL - 60
    finally:
        await s.close()


async def test_a_hard_lock_read_keeps_its_key(tmp_path: Path, raw: aioredis.Redis) -> None:
    s = hot(tmp_path)
    await s.open()
    try:
        await s.add_failure("u")
        await s.lock_user("u", 0.0, True)
        key = f"{s.prefix}lock:u"
        await raw.pexpire(key, 1000 * 3600)  # as if a year had nearly passed
        assert await s.user_lock("u") == (await s.user_lock("u"))
        assert await raw.pttl(key) > (HARD_LOCK_TTL - 60) * 1000
        await s.add_failure("u")  # a failure never shortens it
        assert await raw.pttl(key) > (HARD_LOCK_TTL - 60) * 1000
    finally:
        await s.close()


async def test_prefixes_keep_two_gateways_apart(tmp_path: Path) -> None:
    one, two = hot(tmp_path / "one"), hot(tmp_path / "two")
    await one.open()
    await two.open()
    try:
        assert one.epoch != two.epoch
        assert await one.reserve_use("j", 1, 1000.0, 0.0) == "ok"
        assert await two.reserve_use("j", 1, 1000.0, 0.0) == "ok"
        await one.commit_use("j")
        assert await one.reserve_use("j", 1, 1000.0, 0.0) == "used"
        await two.release_use("j")
        assert await two.reserve_use("j", 1, 1000.0, 0.0) == "ok"
        assert await one.bump_generation("alice") == 1
        assert await two.generation("alice") == 0
        assert await one.add_failure("alice") == 1
        assert await two.add_failure("alice") == 1
        assert await one.hit("k", 600, 10.0) == await two.hit("k", 600, 10.0) == 1
    finally:
        await one.close()
        await two.close()


async def test_the_database_number_in_the_url_is_used(tmp_path: Path) -> None:
    s = RedisHotStore(redis().url(7), TIMEOUT, prefix=f"{name_of(tmp_path)}:")
    await s.open()
    other = aioredis.Redis.from_url(redis().url(7), decode_responses=True)
    zero = aioredis.Redis.from_url(redis().url(0), decode_responses=True)
    try:
        await s.add_failure("u")
        assert await other.exists(f"{s.prefix}lock:u") == 1
        assert await zero.exists(f"{s.prefix}lock:u") == 0
    finally:
        await s.close()
        await other.aclose()
        await zero.aclose()


# ---------------------------------------------------------------- URLs and passwords

@pytest.mark.parametrize(("url", "kept", "found"), [
    ("redis://h:6379/0", "redis://h:6379/0", {}),
    ("rediss://h/2?password_env=PW", "rediss://h/2", {"password_env": "PW"}),
    ("redis://u@h/0?password_file=/run/pw&ssl_cert_reqs=none", "redis://u@h/0?ssl_cert_reqs=none",
     {"password_file": "/run/pw"}),
])
def test_password_parameters_are_taken_out_of_the_url(url: str, kept: str,
                                                      found: dict[str, str]) -> None:
    assert split_url(url) == (kept, found)


@pytest.mark.parametrize("url", ["http://h/0", "redis://:pw@h/0?password_env=PW",
                                 "redis://h/0?password_env=A&password_file=/f",
                                 "redis://h/0?password_env=A&password_env=B"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        split_url(url)


async def test_the_password_comes_from_the_url_an_environment_variable_or_a_file(
        tmp_path: Path, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    monkeypatch.setenv("STEPGATE_TEST_REDIS_PW", "s3cret")
    port = redis().port
    await raw.config_set("requirepass", "s3cret")
    try:
        for url in (f"redis://:s3cret@127.0.0.1:{port}/0",
                    f"redis://127.0.0.1:{port}/0?password_env=STEPGATE_TEST_REDIS_PW",
                    f"redis://127.0.0.1:{port}/0?password_file={tmp_path}/pw"):
            s = RedisHotStore(url, TIMEOUT, prefix=f"{name_of(tmp_path)}:")
            await s.open()
            assert await s.add_failure("u") >= 1
            await s.close()
        wrong = RedisHotStore(f"redis://:nope@127.0.0.1:{port}/0", TIMEOUT)
        with pytest.raises(StoreUnavailable):
            await wrong.open()
        unset = RedisHotStore(f"redis://127.0.0.1:{port}/0?password_env=STEPGATE_TEST_UNSET")
        with pytest.raises(StoreUnavailable):
            await unset.open()
    finally:
        authed = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")
        await authed.config_set("requirepass", "")
        await authed.aclose()


# ---------------------------------------------------------------- lost state: the epoch

async def test_a_redis_that_lost_its_state_changes_the_instance_id(tmp_path: Path) -> None:
    first, second = combined(tmp_path), combined(tmp_path)
    await first.open()
    await second.open()
    signer = Signer([generate_signing_key()])
    signer.instance = first.instance_id
    ticket = signer.ticket(user="alice", rule="r", binding="route", bound=None, now=0.0,
                           ttl=1e10)
    before = first.instance_id
    assert second.instance_id == before
    assert await first.reserve_use("spent", 1, 1e10, 0.0) == "ok"
    await first.commit_use("spent")
    await first.bump_generation("alice")
    try:
        redis().stop()  # no persistence: everything is forgotten
    finally:
        redis().start()
    try:
        # The first reservation after the loss notices it: it fails, never answers 'ok'
        # for a token spent before, and the store's identity is new from then on.
        with pytest.raises(StoreUnavailable, match="lost its state"):
            await first.reserve_use("spent", 1, 1e10, 0.0)
        after = first.instance_id
        assert after != before and after.startswith(before.split(".")[0] + ".")
        # A gateway following the store's identity refuses every ticket and token of before.
        signer.instance = after
        assert signer.read_ticket(ticket, 1.0) is None
        # Another process notices on its next generation read and adopts the same epoch.
        with pytest.raises(StoreUnavailable, match="lost its state"):
            await second.generation("alice")
        assert second.instance_id == after
        assert await second.generation("alice") == 0
        # A process starting now finds it too.
        third = combined(tmp_path)
        await third.open()
        assert third.instance_id == after
        await third.close()
        # The state itself is usable again at once.
        assert await first.reserve_use("new", 1, 1e10, 0.0) == "ok"
        assert await second.reserve_use("new", 1, 1e10, 0.0) == "busy"
    finally:
        await first.close()
        await second.close()


async def test_an_expired_epoch_is_noticed_like_a_lost_one(tmp_path: Path,
                                                           raw: aioredis.Redis) -> None:
    s = hot(tmp_path)
    await s.open()
    try:
        before = s.epoch
        await raw.delete(f"{s.prefix}epoch")
        with pytest.raises(StoreUnavailable):
            await s.generation("alice")
        assert s.epoch not in ("", before)
        assert await s.generation("alice") == 0
    finally:
        await s.close()


# ---------------------------------------------------------------- outages

async def test_a_paused_server_fails_within_the_timeout_and_recovers(tmp_path: Path) -> None:
    s = Combined(durable(tmp_path), hot(tmp_path, TIMEOUT))
    await s.open()
    assert await s.add_failure("u") == 1
    loop = asyncio.get_running_loop()
    redis().pause()
    try:
        for call in (lambda: s.reserve_use("j", 1, 1e10, 0.0), lambda: s.add_failure("u"),
                     lambda: s.generation("u"), lambda: s.hit("k", 60, 0.0)):
            started = loop.time()
            with pytest.raises(StoreUnavailable):
                await call()
            assert loop.time() - started < TIMEOUT + 0.5
        assert await s.factors("alice") == []  # the durable part keeps working
    finally:
        redis().resume()
    try:
        # Nothing lost, no reopen. A call that timed out may still have run once the server
        # read it (a timed-out reservation holds its use: the closed side).
        assert await eventually(lambda: s.add_failure("u")) >= 2
        assert await s.reserve_use("j", 1, 1e10, 0.0) in ("ok", "busy")
        assert await s.reserve_use("fresh", 1, 1e10, 0.0) == "ok"
    finally:
        await s.close()


async def test_a_stopped_server_fails_fast_and_is_reconnected_when_back(tmp_path: Path) -> None:
    s = hot(tmp_path, TIMEOUT)
    await s.open()
    loop = asyncio.get_running_loop()
    try:
        redis().stop()
        started = loop.time()
        with pytest.raises(StoreUnavailable):
            await s.add_failure("u")
        with pytest.raises(StoreUnavailable):
            await s.reserve_use("j", 1, 1e10, 0.0)
        assert loop.time() - started < 2 * TIMEOUT + 0.5
    finally:
        redis().start()
    try:
        assert await eventually(lambda: s.add_failure("u")) == 1  # back, without a reopen
        with pytest.raises(StoreUnavailable, match="lost its state"):
            await s.reserve_use("j", 1, 1e10, 0.0)
        assert await s.reserve_use("j", 1, 1e10, 0.0) == "ok"
    finally:
        await s.close()


async def test_a_closed_or_unreachable_store_raises_store_unavailable(tmp_path: Path) -> None:
    from tests.servers import free_port
    s = RedisHotStore(f"redis://127.0.0.1:{free_port()}/0", TIMEOUT)
    with pytest.raises(StoreUnavailable):
        await s.open()
    with pytest.raises(StoreUnavailable):
        await s.add_failure("u")
    await s.close()
