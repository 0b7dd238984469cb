"""The regulator's two send counters: codes for challenges and codes for addresses being
enrolled are limited apart, each given back on a failed delivery."""

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


def regulator(store: Store, clock: Clock, **throttle: int) -> Regulator:
    return Regulator(store, clock, ThrottleSettings(**throttle),  # type: ignore[arg-type]
                     Audit("-", None, clock, stream=io.StringIO()))


async def refused(reg: Regulator, user: str, *, enrolment: bool) -> Problem:
    with pytest.raises(Problem) as err:
        await reg.start_send(user, enrolment=enrolment)
    return err.value


def test_the_defaults() -> None:
    t = ThrottleSettings()
    assert (t.sends_per_window, t.enrolment_sends_per_window, t.send_window) == (3, 5, 600.0)


async def test_enrolment_sends_do_not_use_challenge_sends(store: Store) -> None:
    clock = Clock()
    reg = regulator(store, clock)
    for _ in range(5):
        await reg.start_send("dora", enrolment=True)
    full = await refused(reg, "dora", enrolment=True)
    assert full.name == "too-many-sends" and full.status == 429
    assert full.detail == "at most 5 codes are sent to addresses being enrolled per 10 minutes"
    assert full.extensions["retry_after"] == 200  # the 600 s window ends at 1200
    for _ in range(3):  # every challenge send is still there
        await reg.start_send("dora")
    challenge = await refused(reg, "dora", enrolment=False)
    assert challenge.detail == "at most 3 codes are sent per 10 minutes"
    await refused(reg, "dora", enrolment=True)  # and the other way round
    await reg.start_send("eve", enrolment=True)  # per user


async def test_each_counter_gives_back_its_own(store: Store) -> None:
    clock = Clock()
    reg = regulator(store, clock, enrolment_sends_per_window=1, sends_per_window=1)
    await reg.start_send("fay", enrolment=True)
    await reg.start_send("fay")
    await reg.give_back_send("fay", enrolment=True)
    await reg.start_send("fay", enrolment=True)
    await refused(reg, "fay", enrolment=False)  # the challenge send was not given back
    clock.t += 600
    await reg.start_send("fay")
    await reg.start_send("fay", enrolment=True)
