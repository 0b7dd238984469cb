"""A TOTP code used once, offered again: the factor says ``reused`` (the same code, or a code
of a step at or before the last one accepted), which is not the same as wrong; the endpoints'
answer is in tests/api/test_code_reuse.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.factors.base import Verification, outcome
from gateway.factors.totp import TotpFactor
from gateway.keys import KeyRing, generate_data_key, generate_signing_key
from gateway.store import FactorRecord, Store, open_store

from ..totp_ref import hotp

pytestmark = pytest.mark.anyio
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_800_000_000.0
STEP = int(NOW // 30)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/t.db")
    await s.open(create=True)
    yield s
    await s.close()


async def _factor(store: Store) -> tuple[TotpFactor, FactorRecord]:
    totp = TotpFactor(store, KeyRing([generate_signing_key()], [generate_data_key()]))
    record = totp.record("alice", "f1", SECRET, label="phone", now=NOW)
    await store.add_factor(record)
    return totp, record


async def _fresh(store: Store) -> FactorRecord:
    (record,) = await store.factors("alice")
    return record


@pytest.mark.parametrize("first,again,reused", [
    (0, 0, True),     # the same code
    (0, -1, True),    # an earlier step than the one accepted
    (1, 0, True),     # a code ahead of time was used: the current one is older
    (-1, 0, False),   # a later step is a new code
    (0, 1, False),
])
async def test_steps_at_or_before_the_last_accepted_are_reused(store: Store, first: int,
                                                               again: int, reused: bool) -> None:
    totp, record = await _factor(store)
    assert await totp.check(record, hotp(SECRET, STEP + first), NOW) == Verification(True, "f1")
    result = await totp.check(await _fresh(store), hotp(SECRET, STEP + again), NOW)
    assert result.ok is not reused and result.reused is reused


async def test_a_stale_record_is_settled_by_the_store(store: Store) -> None:
    totp, record = await _factor(store)
    assert (await totp.check(record, hotp(SECRET, STEP), NOW)).ok
    # the record was read before the first use (another process, a parallel request)
    result = await totp.check(record, hotp(SECRET, STEP), NOW)
    assert result == Verification(False, "f1", reused=True)


async def test_wrong_codes_are_not_reuses(store: Store) -> None:
    totp, record = await _factor(store)
    assert (await totp.check(record, hotp(SECRET, STEP), NOW)).ok
    for code in ("000000" if hotp(SECRET, STEP - 1) != "000000" else "111111",
                 hotp(SECRET, STEP - 2), "12345", "１２３４５６"):
        result = await totp.check(await _fresh(store), code, NOW)
        assert result == Verification(False)


async def test_verify_reports_a_reuse_across_the_users_records(store: Store) -> None:
    totp, record = await _factor(store)
    other = totp.record("alice", "f2", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", label="tablet", now=NOW)
    await store.add_factor(other)
    records = await store.factors("alice")
    code = hotp(SECRET, STEP)
    assert (await totp.verify("alice", None, records, {"code": code}, NOW)).ok  # type: ignore[arg-type]
    records = await store.factors("alice")
    again = await totp.verify("alice", None, records, {"code": code}, NOW)  # type: ignore[arg-type]
    assert again.ok is False and again.reused is True
    wrong = await totp.verify("alice", None, records, {"code": "12345x"}, NOW)  # type: ignore[arg-type]
    assert wrong == Verification(False)


def test_confirm_may_answer_a_bool_or_a_verification() -> None:
    assert outcome(True) == Verification(True)
    assert outcome(False) == Verification(False)
    assert outcome(Verification(False, "f", reused=True)).reused
