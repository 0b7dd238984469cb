"""The regulator: back-off, hard locks, challenge and send windows, on a frozen clock."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import Audit
from gateway.config.settings import ThrottleSettings
from gateway.decision.regulator import Regulator
from gateway.problems import Problem
from gateway.store import Store, open_store

pytestmark = pytest.mark.anyio


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/r.db")
    await s.open()
    yield s
    await s.close()


def regulator(store: Store, clock: Clock, locked: list[str] | None = None) -> Regulator:
    out = io.StringIO()
    return Regulator(store, clock, ThrottleSettings(), Audit("-", None, clock, stream=out),
                     on_lock=(locked if locked is not None else []).append)


def test_backoff_doubles_then_caps_then_hard_locks() -> None:
    r = Regulator(None, Clock(), ThrottleSettings(), None)  # type: ignore[arg-type]
    assert r.lock_for(9, 0.0) is None
    assert r.lock_for(10, 0.0) == (300.0, False)
    assert r.lock_for(20, 0.0) == (600.0, False)
    assert r.lock_for(30, 0.0) == (1200.0, False)
    assert r.lock_for(90, 0.0) == (3600.0, False)  # capped at lock_max
    assert r.lock_for(100, 5.0) == (5.0, True)
    assert r.lock_for(101, 5.0) == (5.0, True)


async def test_failures_lock_revoke_and_unlock(store: Store) -> None:
    clock = Clock()
    locked: list[str] = []
    reg = regulator(store, clock, locked)
    for _ in range(9):
        await reg.failure("bob")
    await reg.check("bob")
    with pytest.raises(Problem) as err:
        await reg.failure("bob")
    assert err.value.status == 429 and err.value.extensions["retry_after"] == 300
    assert locked == ["bob"] and await store.generation("bob") == 1
    with pytest.raises(Problem):
        await reg.check("bob")
    clock.t += 301
    await reg.check("bob")
    await reg.success("bob")
    assert (await store.user_lock("bob")).failures == 0


async def test_challenge_and_send_windows(store: Store) -> None:
    clock = Clock()
    reg = regulator(store, clock)
    for _ in range(10):
        await reg.start_challenge("carol")
    with pytest.raises(Problem) as err:
        await reg.start_challenge("carol")
    assert err.value.name == "too-many-challenges"
    assert err.value.extensions["retry_after"] == 200  # the 600 s window ends at 1200
    await reg.give_back_challenge("carol")
    await reg.give_back_challenge("carol")
    await reg.start_challenge("carol")
    for _ in range(3):
        await reg.start_send("carol")
    with pytest.raises(Problem):
        await reg.start_send("carol")
    await reg.give_back_send("carol")
    await reg.start_send("carol")  # a refused send was given back; the 429 was not counted
    clock.t += 600
    await reg.start_challenge("carol")
