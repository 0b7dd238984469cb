"""The store contract, run against every backend (only SQLite so far)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import (
    ChallengeRecord,
    FactorRecord,
    Store,
    StoreUnavailable,
    UserLock,
    open_store,
)


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/s.db")
    await s.open()
    yield s
    await s.close()


def factor(fid: str = "f1", user: str = "alice", status: str = "active") -> FactorRecord:
    return FactorRecord(fid, user, "totp", status, "phone", "v1.sealed", 100.0)  # type: ignore[arg-type]


pytestmark = pytest.mark.anyio


async def test_factors_lifecycle(store: Store) -> None:
    await store.add_factor(factor("f1", status="pending"))
    await store.add_factor(factor("f2", user="bob"))
    assert [f.id for f in await store.factors("alice")] == ["f1"]
    assert await store.activate_factor("alice", "f1")
    assert not await store.activate_factor("alice", "f1")
    assert not await store.activate_factor("alice", "f2")  # bob's
    assert not await store.delete_factor("alice", "f2")
    assert await store.delete_factor("alice", "f1")
    assert await store.factors("alice") == []


async def test_factor_counters_only_move_forward(store: Store) -> None:
    await store.add_factor(factor())
    assert await store.advance_counter("f1", 10, 1.0)
    assert not await store.advance_counter("f1", 10, 1.0)
    assert not await store.advance_counter("f1", 9, 1.0)
    assert await store.advance_counter("f1", 11, 1.0)
    results = await asyncio.gather(*(store.advance_counter("f1", 12, 1.0) for _ in range(10)))
    assert results.count(True) == 1


async def test_recovery_codes(store: Store) -> None:
    await store.replace_recovery_codes("alice", ["h1", "h2"], 1.0)
    assert await store.recovery_codes_left("alice") == 2
    assert await store.consume_recovery_code("alice", "h1", 2.0)
    assert not await store.consume_recovery_code("alice", "h1", 2.0)
    assert not await store.consume_recovery_code("bob", "h2", 2.0)
    await store.replace_recovery_codes("alice", ["h3"], 3.0)
    assert not await store.consume_recovery_code("alice", "h2", 3.0)  # old set void
    assert await store.recovery_codes_left("alice") == 1


async def test_token_uses_reserve_commit_release(store: Store) -> None:
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "busy"
    await store.release_use("j1")
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "ok"
    await store.commit_use("j1")
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "used"
    results = await asyncio.gather(*(store.reserve_use("j2", 1, 1000.0, 0.0) for _ in range(20)))
    assert results.count("ok") == 1 and results.count("busy") == 19
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "busy"


async def test_a_reservation_holds_until_the_token_expires(store: Store) -> None:
    # A request that may have reached the upstream keeps its use: it never lapses back.
    assert await store.reserve_use("j", 1, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j", 1, 1000.0, 10.0) == "busy"
    assert await store.reserve_use("j", 1, 1000.0, 999.0) == "busy"
    await store.commit_use("j")
    assert await store.reserve_use("j", 1, 1000.0, 999.0) == "used"


async def test_generations_revoke(store: Store) -> None:
    assert await store.generation("alice") == 0
    assert await store.bump_generation("alice") == 1
    assert await store.generation("alice") == 1
    assert await store.generation("bob") == 0
    await store.add_factor(factor())
    await store.delete_user("alice")
    assert await store.generation("alice") == 2
    await store.unlock("alice")
    assert await store.generation("alice") == 3
    await store.lock_user("bob", 60.0, False)  # a lockout revokes
    assert await store.generation("bob") == 1


async def test_the_store_has_a_stable_instance_id(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/i.db")
    await s.open()
    first = s.instance_id
    await s.close()
    await s.open()
    assert s.instance_id == first and len(first) >= 12
    await s.close()
    other = open_store(f"sqlite:///{tmp_path}/j.db")
    await other.open()
    assert other.instance_id != first
    await other.close()


async def test_failures_count_and_locks_hold(store: Store) -> None:
    assert [await store.add_failure("u") for _ in range(3)] == [1, 2, 3]
    assert await store.user_lock("u") == UserLock(3, 0.0, False)
    await store.lock_user("u", 1300.0, False)
    await store.lock_user("u", 1200.0, False)  # a shorter lock never shortens a longer one
    assert await store.user_lock("u") == UserLock(3, 1300.0, False)
    await store.lock_user("u", 0.0, True)
    assert (await store.user_lock("u")).hard
    await store.reset_failures("u")
    assert await store.user_lock("u") == await store.user_lock("nobody") == UserLock(0, 0.0, False)
    results = await asyncio.gather(*(store.add_failure("v") for _ in range(20)))
    assert sorted(results) == list(range(1, 21))


async def test_windowed_counter(store: Store) -> None:
    assert [await store.hit("k", 600, 10.0) for _ in range(3)] == [1, 2, 3]
    assert await store.hit("k", 600, 601.0) == 1
    assert await store.hit("other", 600, 601.0) == 1


async def test_challenges(store: Store) -> None:
    ch = ChallengeRecord("c1", "alice", "n1", "ticket", "totp", None, "pending", 2, 0.0, 300.0,
                         600.0)
    await store.add_challenge(ch)
    assert await store.challenge("c1") == ch
    assert await store.fail_challenge("c1") == 1
    assert await store.fail_challenge("c1") == 0
    assert (await store.challenge("c1")).state == "failed"  # type: ignore[union-attr]
    assert not await store.verify_challenge("c1")
    await store.add_challenge(ChallengeRecord("c2", "alice", "n1", "t", "email", None, "pending",
                                              5, 0.0, 300.0, 600.0))
    assert await store.verify_challenge("c2")
    assert not await store.verify_challenge("c2")
    assert await store.verified_factors("alice", "n1") == {"email"}
    assert await store.verified_factors("bob", "n1") == set()


async def test_audit_filters(store: Store) -> None:
    for ts, user in [(1.0, "a"), (2.0, "b"), (3.0, "a")]:
        await store.append_audit([{"ts": ts, "user": user, "event": "x"}])
    assert [e["ts"] for e in await store.audit("a", None, None, 10)] == [1.0, 3.0]
    assert [e["ts"] for e in await store.audit(None, 2.0, 3.0, 10)] == [2.0, 3.0]


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = f"sqlite:///{tmp_path}/p.db"
    s = open_store(path)
    await s.open()
    await s.add_factor(factor())
    await s.close()
    s2 = open_store(path)
    await s2.open()
    assert [f.id for f in await s2.factors("alice")] == ["f1"]
    await s2.close()


async def test_unusable_store_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    s = open_store(f"sqlite:///{tmp_path}/dir.db")
    with pytest.raises(StoreUnavailable):
        await s.open()
    with pytest.raises(StoreUnavailable):
        await s.factors("alice")


async def test_a_store_from_before_factor_data_keeps_its_factors(tmp_path: Path) -> None:
    """A database at schema version 2 (sealed secrets in 'secret', TOTP steps in
    'last_step') opens with its TOTP seeds and addresses readable, counters kept."""
    import sqlite3

    from gateway.factors.base import open_data
    from gateway.keys import KeyRing, generate_data_key, generate_signing_key
    from gateway.store.sqlite import MIGRATIONS

    ring = KeyRing([generate_signing_key()], [generate_data_key()])
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (2)")
    for script in MIGRATIONS[:2]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO factors VALUES (?,?,?,?,?,?,?,?,?)",
               ("f1", "alice", "totp", "active", "phone",
                ring.encrypt(b"JBSWY3DPEHPK3PXP", "totp:alice:f1"), 1.0, None, 7))
    db.execute("INSERT INTO factors VALUES (?,?,?,?,?,?,?,?,?)",
               ("f2", "alice", "sms", "pending", "+33 ••• 78",
                ring.encrypt(b"+33612345678", "address:alice:f2"), 2.0, 3.0, -1))
    db.commit()
    db.close()
    s = open_store(f"sqlite:///{path}")
    await s.open()
    totp, sms = await s.factors("alice")
    assert (totp.counter, totp.status, sms.last_used_at) == (7, "active", 3.0)
    assert open_data(ring, totp.data, "secret", "totp:alice:f1") == "JBSWY3DPEHPK3PXP"
    assert open_data(ring, sms.data, "address", "address:alice:f2") == "+33612345678"
    assert not await s.advance_counter("f1", 7, 4.0)
    assert await s.advance_counter("f1", 8, 4.0)
    await s.close()
