"""The store contract, run against every backend in BACKENDS: SQLite, PostgreSQL, and
PostgreSQL with Redis for the hot state (real servers, started by tests/servers.py).

Each backend is one entry: a factory making a new, unopened handle on the state kept under
a directory. Two handles made for one directory share that state the way two gateway
processes share a store, which is how the races below contend for real: each handle has
its own connection (and, for SQLite, its own thread), so the calls overlap in the backend
instead of queueing behind one connection.
"""

from __future__ import annotations

import ast
import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest

from gateway.store import (
    ChallengeRecord,
    FactorRecord,
    Store,
    StoreMissing,
    StoreUnavailable,
    UserLock,
    open_store,
)
from gateway.store.base import CONCERNS

pytestmark = pytest.mark.anyio

T = TypeVar("T")
Factory = Callable[[Path], Store]


def _sqlite(state: Path) -> Store:
    # A generous timeout: the races queue dozens of writers on one file, and a call that
    # gave up would fail the race for the wrong reason.
    return open_store(f"sqlite:///{state}/store.db", timeout=10.0)


# A server backend (PostgreSQL, Redis) maps the directory to a database, schema or key
# prefix of its own, so tests never see each other's state.
BACKENDS: dict[str, Factory] = {"sqlite": _sqlite}
BACKENDS.update(__import__("tests.store.backend_postgresql", fromlist=["B"]).BACKENDS)
BACKENDS.update(__import__("tests.store.backend_redis", fromlist=["B"]).BACKENDS)
HANDLES = 5  # independent handles in a race


class Handles(Protocol):
    async def __call__(self, n: int = 1, state: Path | None = None,
                       together: bool = False) -> list[Store]: ...


@pytest.fixture(params=list(BACKENDS))
async def handles(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Handles]:
    """Opens ``n`` handles on one state (the test's own unless ``state`` names another),
    one after the other or all ``together``; every handle is closed after the test."""
    made: list[Store] = []
    factory = BACKENDS[request.param]

    async def make(n: int = 1, state: Path | None = None, together: bool = False) -> list[Store]:
        new = [factory(state or tmp_path) for _ in range(n)]
        made.extend(new)
        if together:
            await asyncio.gather(*(s.open() for s in new))
        else:
            for s in new:
                await s.open()
        return new
    yield make
    for s in made:
        await s.close()


@pytest.fixture
async def store(handles: Handles) -> Store:
    (s,) = await handles()
    return s


@pytest.fixture
async def stores(handles: Handles) -> list[Store]:
    return await handles(HANDLES)


async def race(stores: list[Store], n: int, call: Callable[[Store], Awaitable[T]]) -> list[T]:
    """``n`` calls spread round-robin over the handles, all started in one go."""
    return list(await asyncio.gather(*(call(stores[i % len(stores)]) for i in range(n))))


def factor(fid: str = "f1", user: str = "alice", status: str = "active") -> FactorRecord:
    return FactorRecord(fid, user, "totp", status, "phone", "v1.sealed", 100.0)  # type: ignore[arg-type]


def challenge(cid: str = "c1", user: str = "alice", nonce: str = "n1", factor: str = "totp",
              attempts: int = 5, created_at: float = 0.0) -> ChallengeRecord:
    return ChallengeRecord(cid, user, nonce, "ticket", factor, None, "pending", attempts,
                           created_at, created_at + 300.0, 600.0)


# ---------------------------------------------------------------- the interface is covered

def test_every_method_of_the_interface_is_exercised() -> None:
    """A method no test here names is one a new backend could get wrong unnoticed."""
    members = {name for concern in CONCERNS
               for name in [*vars(concern), *vars(concern).get("__annotations__", {})]
               if not name.startswith("_")}
    assert set(Store.__mro__) - {Store, *CONCERNS} <= {Protocol, Generic, object}
    assert not {n for n in vars(Store) if not n.startswith("_")}  # all of it is in the concerns
    used = {node.attr for node in ast.walk(ast.parse(Path(__file__).read_text()))
            if isinstance(node, ast.Attribute)}
    assert members - used == set()
    assert len(members) > 30  # the protocols were really read


# ---------------------------------------------------------------- lifecycle

async def test_the_store_has_a_stable_instance_id(handles: Handles, tmp_path: Path) -> None:
    (s,) = await handles()
    first = s.instance_id
    await s.close()
    await s.open()
    assert s.instance_id == first and len(first) >= 12
    (same,) = await handles()
    assert same.instance_id == first
    (other,) = await handles(state=tmp_path / "other")
    assert other.instance_id != first


async def test_handles_opened_at_once_agree_on_one_instance_id(handles: Handles,
                                                               tmp_path: Path) -> None:
    # Several processes starting together on a new store create it once. Several rounds:
    # a new file is contended only while the first of them creates it.
    for n in range(10):
        fresh = await handles(HANDLES, state=tmp_path / f"fresh{n}", together=True)
        assert len({s.instance_id for s in fresh}) == 1


async def test_data_survives_reopen(handles: Handles) -> None:
    (s,) = await handles()
    await s.add_factor(factor())
    await s.close()
    await s.close()  # closing twice is harmless
    (again,) = await handles()
    assert [f.id for f in await again.factors("alice")] == ["f1"]


async def test_a_closed_store_raises_store_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.factors("alice")
    with pytest.raises(StoreUnavailable):
        await store.reserve_use("j", 1, 1000.0, 0.0)


async def test_an_open_store_is_ready_and_a_closed_one_is_not(store: Store) -> None:
    assert await store.ready() == []
    await store.close()
    down = await store.ready()
    assert down and all(d.split(":")[0] in ("store", "redis") for d in down)
    await store.open()
    assert await store.ready() == []


async def test_open_with_create_opens_an_existing_store_unchanged(handles: Handles) -> None:
    (s,) = await handles()
    await s.add_factor(factor())
    (created,) = await handles()
    await created.close()
    await created.open(create=True)
    assert created.instance_id == s.instance_id
    assert [f.id for f in await created.factors("alice")] == ["f1"]


# ---------------------------------------------------------------- factors and recovery codes

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
    assert [f.id for f in await store.factors("bob")] == ["f2"]


async def test_factor_records_round_trip_in_creation_order(store: Store) -> None:
    late = FactorRecord("a-late", "alice", "sms", "pending", "+33 ••• 78", '{"address":"x"}',
                        200.0, 250.0, 7)
    await store.add_factor(late)
    await store.add_factor(factor("z-early"))
    assert await store.factors("alice") == [factor("z-early"), late]


async def test_factor_counters_only_move_forward(store: Store) -> None:
    await store.add_factor(factor())
    assert await store.advance_counter("f1", 10, 1.0)
    assert not await store.advance_counter("f1", 10, 2.0)
    assert not await store.advance_counter("f1", 9, 2.0)
    assert (await store.factors("alice"))[0].last_used_at == 1.0  # a refusal does not touch it
    assert await store.advance_counter("f1", 11, 3.0)
    (f,) = await store.factors("alice")
    assert (f.counter, f.last_used_at) == (11, 3.0)
    assert not await store.advance_counter("nope", 1, 3.0)


async def test_touch_factor_marks_it_used(store: Store) -> None:
    await store.add_factor(factor())
    await store.touch_factor("f1", 42.0)
    (f,) = await store.factors("alice")
    assert (f.last_used_at, f.counter) == (42.0, -1)


async def test_recovery_codes(store: Store) -> None:
    await store.replace_recovery_codes("alice", ["h1", "h2"], 1.0)
    assert await store.recovery_codes_left("alice") == 2
    assert await store.consume_recovery_code("alice", "h1", 2.0)
    assert not await store.consume_recovery_code("alice", "h1", 2.0)
    assert not await store.consume_recovery_code("bob", "h2", 2.0)
    assert await store.recovery_codes_left("alice") == 1
    await store.replace_recovery_codes("alice", ["h3"], 3.0)
    assert not await store.consume_recovery_code("alice", "h2", 3.0)  # old set void
    assert await store.recovery_codes_left("alice") == 1
    assert await store.recovery_codes_left("bob") == 0


async def test_users_and_recovery_code_hashes_for_copying(store: Store) -> None:
    assert await store.users() == []
    await store.add_factor(factor("f1", user="carol"))
    await store.add_factor(factor("f2", user="carol"))
    await store.replace_recovery_codes("alice", ["h2", "h1", "h3"], 1.0)
    assert await store.consume_recovery_code("alice", "h2", 2.0)
    assert await store.users() == ["alice", "carol"]
    assert await store.recovery_code_hashes("alice") == ["h1", "h3"]
    assert await store.recovery_code_hashes("carol") == []


async def test_delete_user_removes_everything_and_revokes(store: Store) -> None:
    await store.add_factor(factor("f1"))
    await store.add_factor(factor("f2"))
    await store.add_factor(factor("f3", user="bob"))
    await store.replace_recovery_codes("alice", ["h1", "h2", "h3"], 1.0)
    await store.add_failure("alice")
    assert await store.delete_user("alice") == 5  # two factors, three codes
    assert await store.factors("alice") == []
    assert await store.recovery_codes_left("alice") == 0
    assert await store.user_lock("alice") == UserLock(0, 0.0, False)
    assert await store.generation("alice") == 1
    assert [f.id for f in await store.factors("bob")] == ["f3"]
    assert await store.delete_user("nobody") == 0


# ---------------------------------------------------------------- challenges

async def test_challenges(store: Store) -> None:
    ch = challenge("c1", attempts=2)
    await store.add_challenge(ch)
    assert await store.challenge("c1") == ch
    assert await store.challenge("nope") is None
    assert await store.fail_challenge("c1") == 1
    assert await store.fail_challenge("c1") == 0
    assert (await store.challenge("c1")).state == "failed"  # type: ignore[union-attr]
    assert await store.fail_challenge("c1") == 0
    assert await store.fail_challenge("nope") == 0
    assert not await store.verify_challenge("c1")
    await store.add_challenge(challenge("c2", factor="email"))
    assert await store.verify_challenge("c2")
    assert not await store.verify_challenge("c2")
    assert not await store.verify_challenge("nope")
    assert await store.verified_factors("alice", "n1") == {"email"}
    assert await store.verified_factors("alice", "n2") == set()
    assert await store.verified_factors("bob", "n1") == set()


async def test_a_challenge_keeps_every_field(store: Store) -> None:
    ch = ChallengeRecord("c1", "alice", "n1", "ticket", "sms", "f9", "pending", 3, 1.5, 301.5,
                         601.5, "v1.hash", 2.5)
    await store.add_challenge(ch)
    assert await store.challenge("c1") == ch
    assert await store.latest_challenge("alice", "n1", "sms") == ch


async def test_latest_challenge_is_the_newest_pending_one(store: Store) -> None:
    await store.add_challenge(challenge("old", factor="sms", created_at=1.0))
    await store.add_challenge(challenge("new", factor="sms", created_at=2.0))
    await store.add_challenge(challenge("other", factor="email", created_at=3.0))
    assert (await store.latest_challenge("alice", "n1", "sms")).id == "new"  # type: ignore[union-attr]
    await store.void_challenge("new")  # a resend voids the one before
    assert (await store.challenge("new")).state == "expired"  # type: ignore[union-attr]
    assert not await store.verify_challenge("new")
    assert (await store.latest_challenge("alice", "n1", "sms")).id == "old"  # type: ignore[union-attr]
    assert await store.verify_challenge("old")
    await store.void_challenge("old")  # only a pending challenge is voided
    assert (await store.challenge("old")).state == "verified"  # type: ignore[union-attr]
    assert await store.latest_challenge("alice", "n1", "sms") is None
    assert await store.latest_challenge("alice", "n2", "email") is None
    assert await store.latest_challenge("bob", "n1", "email") is None


# ---------------------------------------------------------------- token uses and generations

async def test_token_uses_reserve_commit_release(store: Store) -> None:
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "busy"
    await store.release_use("j1")
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "ok"
    await store.commit_use("j1")
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "used"
    await store.release_use("j1")  # nothing reserved: no use comes back
    assert await store.reserve_use("j1", 1, 1000.0, 0.0) == "used"
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "ok"
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "busy"
    await store.commit_use("j3")
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "busy"
    await store.commit_use("j3")
    assert await store.reserve_use("j3", 2, 1000.0, 0.0) == "used"


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
    await store.reset_failures("alice")  # forgetting failures revokes nothing
    assert await store.generation("alice") == 3
    await store.lock_user("bob", 60.0, False)  # a lockout revokes
    assert await store.generation("bob") == 1


# ---------------------------------------------------------------- counters

async def test_failures_count_and_locks_hold(store: Store) -> None:
    assert [await store.add_failure("u") for _ in range(3)] == [1, 2, 3]
    assert await store.user_lock("u") == UserLock(3, 0.0, False)
    await store.lock_user("u", 1300.0, False)
    await store.lock_user("u", 1200.0, False)  # a shorter lock never shortens a longer one
    assert await store.user_lock("u") == UserLock(3, 1300.0, False)
    await store.lock_user("u", 0.0, True)
    assert await store.user_lock("u") == UserLock(3, 1300.0, True)
    await store.lock_user("u", 1400.0, False)  # a hard lock stays hard
    assert await store.user_lock("u") == UserLock(3, 1400.0, True)
    await store.reset_failures("u")
    assert await store.user_lock("u") == await store.user_lock("nobody") == UserLock(0, 0.0, False)
    await store.add_failure("u")
    await store.unlock("u")
    assert await store.user_lock("u") == UserLock(0, 0.0, False)


async def test_windowed_counter(store: Store) -> None:
    assert [await store.hit("k", 600, 10.0) for _ in range(3)] == [1, 2, 3]
    assert await store.hit("k", 600, 599.0, -1) == 2  # one taken back
    assert await store.hit("k", 600, 599.0, 5) == 7
    assert await store.hit("k", 600, 601.0) == 1  # the next window
    assert await store.hit("other", 600, 601.0) == 1
    assert await store.hit("fresh", 600, 601.0, -1) == 0  # never below zero
    assert await store.hit("fresh", 600, 601.0) == 1


# ---------------------------------------------------------------- audit

async def test_audit_filters(store: Store) -> None:
    for ts, user in [(1.0, "a"), (2.0, "b"), (3.0, "a")]:
        await store.append_audit([{"ts": ts, "user": user, "event": "x"}])
    assert [e["ts"] for e in await store.audit("a", None, None, 10)] == [1.0, 3.0]
    assert [e["ts"] for e in await store.audit(None, 2.0, 3.0, 10)] == [2.0, 3.0]
    assert [e["ts"] for e in await store.audit(None, None, 2.0, 10)] == [1.0, 2.0]
    assert [e["ts"] for e in await store.audit(None, None, None, 2)] == [2.0, 3.0]  # the newest
    assert await store.audit("c", None, None, 10) == []


async def test_audit_keeps_a_batch_whole(store: Store) -> None:
    batch: list[dict[str, Any]] = [{"ts": 5.0, "user": "a", "event": "verified", "factor": "totp"},
                                   {"ts": 5.0, "event": "allowed", "n": [1, 2]}]
    await store.append_audit(batch)
    await store.append_audit([])
    assert await store.audit(None, None, None, 10) == batch


# ---------------------------------------------------------------- races across handles
#
# Each race spreads its calls over HANDLES independent handles on one state: a backend
# whose decision is not atomic (a read, then a write, outside one transaction) lets two
# handles both win, and these fail. One round may happen not to interleave in the window
# that matters, so each race is run ROUNDS times on fresh keys.

ROUNDS = 5


@pytest.mark.parametrize("fresh", [True, False], ids=["new-token", "released-token"])
async def test_race_one_single_use_reservation_wins(stores: list[Store], fresh: bool) -> None:
    for n in range(ROUNDS):
        jti = f"j{n}"
        if not fresh:
            assert await stores[0].reserve_use(jti, 1, 1000.0, 0.0) == "ok"
            await stores[0].release_use(jti)
        results = await race(stores, 50, lambda s: s.reserve_use(jti, 1, 1000.0, 0.0))
        assert results.count("ok") == 1 and results.count("busy") == 49
        await stores[1].commit_use(jti)
        assert await race(stores, 10, lambda s: s.reserve_use(jti, 1, 1000.0, 0.0)) == ["used"] * 10


async def test_race_a_counted_token_gives_out_its_uses_exactly(stores: list[Store]) -> None:
    for n in range(ROUNDS):
        jti = f"j{n}"
        results = await race(stores, 50, lambda s: s.reserve_use(jti, 3, 1000.0, 0.0))
        assert results.count("ok") == 3 and results.count("busy") == 47
        await asyncio.gather(*(s.commit_use(jti) for s in stores[:3]))
        assert await stores[4].reserve_use(jti, 3, 1000.0, 0.0) == "used"


async def test_race_failures_are_all_counted(stores: list[Store]) -> None:
    for n in range(ROUNDS):
        user = f"u{n}"
        results = await race(stores, 50, lambda s: s.add_failure(user))
        assert sorted(results) == list(range(1, 51))  # each count seen once: no threshold skipped
        assert (await stores[0].user_lock(user)).failures == 50


async def test_race_one_totp_step_is_accepted_once(stores: list[Store]) -> None:
    await stores[0].add_factor(factor())
    for step in range(1, ROUNDS + 1):
        results = await race(stores, 20, lambda s: s.advance_counter("f1", step, 1.0))
        assert results.count(True) == 1
    assert (await stores[3].factors("alice"))[0].counter == ROUNDS


async def test_race_a_recovery_code_is_consumed_once(stores: list[Store]) -> None:
    codes = [f"h{n}" for n in range(ROUNDS)]
    await stores[0].replace_recovery_codes("alice", [*codes, "spare"], 1.0)
    for code in codes:
        results = await race(stores, 20, lambda s: s.consume_recovery_code("alice", code, 2.0))
        assert results.count(True) == 1
    assert await stores[2].recovery_codes_left("alice") == 1


async def test_race_a_challenge_is_verified_once(stores: list[Store]) -> None:
    for n in range(ROUNDS):
        await stores[0].add_challenge(challenge(f"c{n}"))
        results = await race(stores, 20, lambda s: s.verify_challenge(f"c{n}"))
        assert results.count(True) == 1
    assert await stores[1].verified_factors("alice", "n1") == {"totp"}


async def test_race_a_challenge_spends_its_attempts_once_each(stores: list[Store]) -> None:
    for n in range(ROUNDS):
        await stores[0].add_challenge(challenge(f"c{n}", attempts=3))
        results = await race(stores, 20, lambda s: s.fail_challenge(f"c{n}"))
        assert sorted(results) == [0] * 18 + [1, 2]
        assert (await stores[1].challenge(f"c{n}")).state == "failed"  # type: ignore[union-attr]


async def test_race_generations_are_bumped_once_each(stores: list[Store]) -> None:
    for n in range(ROUNDS):
        user = f"u{n}"
        results = await race(stores, 30, lambda s: s.bump_generation(user))
        assert sorted(results) == list(range(1, 31))
        assert await stores[2].generation(user) == 30


async def test_race_windowed_hits_are_all_counted(stores: list[Store]) -> None:
    for n in range(ROUNDS):
        results = await race(stores, 40, lambda s: s.hit(f"k{n}", 600, 10.0))
        assert sorted(results) == list(range(1, 41))


# ---------------------------------------------------------------- SQLite specifics

async def test_unusable_store_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    s = open_store(f"sqlite:///{tmp_path}/dir.db")
    with pytest.raises(StoreUnavailable):
        await s.open()
    with pytest.raises(StoreUnavailable):
        await s.factors("alice")


async def test_a_locked_file_fails_within_the_timeout(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/s.db", timeout=0.3)
    await s.open()
    lock = sqlite3.connect(tmp_path / "s.db")
    lock.execute("BEGIN IMMEDIATE")
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable):
            await s.add_failure("u")
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert await s.add_failure("u") == 1  # and it recovers without a restart
    await s.close()


async def test_a_new_file_another_process_is_creating_is_waited_for(tmp_path: Path) -> None:
    # A writer on a new file (not yet in WAL mode) makes SQLite refuse the switch to WAL at
    # once, without its busy timeout: what a second process starting beside the first
    # meets. The open waits for it instead of failing.
    path = tmp_path / "s.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.2, other.execute, "ROLLBACK")
    s = open_store(f"sqlite:///{path}")
    try:
        await s.open()
        assert await s.add_failure("u") == 1
    finally:
        await s.close()
        other.close()


async def test_a_lost_store_refuses_to_start_afresh(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = open_store(f"sqlite:///{path}")
    await s.open()
    first = s.instance_id
    await s.close()
    assert (tmp_path / "s.db.instance").read_text().strip() == first
    for f in tmp_path.glob("s.db*"):
        if f.suffix != ".instance":
            f.unlink()
    with pytest.raises(StoreMissing):
        await s.open()
    await s.close()
    await s.open(create=True)
    assert s.instance_id != first
    assert (tmp_path / "s.db.instance").read_text().strip() == s.instance_id
    await s.close()


async def test_a_store_from_before_factor_data_keeps_its_factors(tmp_path: Path) -> None:
    """A database at schema version 2 (sealed secrets in 'secret', TOTP steps in
    'last_step') opens with its TOTP seeds and addresses readable, counters kept."""
    from gateway.factors.base import open_data
    from gateway.keys import KeyRing, generate_data_key, generate_signing_key
    from gateway.store.sqlite import MIGRATIONS

    ring = KeyRing([generate_signing_key()], [generate_data_key()])
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (2)")
    for script in MIGRATIONS[:2]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    insert = ("INSERT INTO factors (id, user, type, status, label, secret, created_at, "
              "last_used_at, last_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    db.execute(insert, ("f1", "alice", "totp", "active", "phone",
                        ring.encrypt(b"JBSWY3DPEHPK3PXP", "totp:alice:f1"), 1.0, None, 7))
    db.execute(insert, ("f2", "alice", "sms", "pending", "+33 ••• 78",
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
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS),)
    db.close()
