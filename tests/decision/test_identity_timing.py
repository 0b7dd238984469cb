"""htpasswd: a wrong password costs the same for unknown and known users (no user enumeration
by response time, CWE-208), because the dummy hash copies the file's bcrypt cost."""

from __future__ import annotations

import base64
import statistics
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from gateway.config.settings import BasicIdentity
from gateway.decision import identity
from gateway.decision.identity import DEFAULT_DUMMY_COST, HtpasswdIdentity, bcrypt_cost, dummy_cost

pytestmark = pytest.mark.anyio

# Medians of interleaved samples; the band leaves room for a noisy shared machine, while a
# dummy one cost step off would show a ratio of about 2 (and a cost-10 dummy against cost-8
# users about 4).
SAMPLES = 25
BAND = (0.75, 1.33)


def hashed(password: bytes, cost: int) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode()


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{name}:{value}\n" for name, value in users.items()))
    return path


def raw(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


async def timed(ident: HtpasswdIdentity, user: str, password: str) -> float:
    """Milliseconds for one verify() call, straight past the result cache."""
    start = time.perf_counter()
    ok, _ = await ident.verify(raw(user, password), user, password)
    elapsed = (time.perf_counter() - start) * 1000
    assert ok is False
    return elapsed


async def medians(ident: HtpasswdIdentity, groups: dict[str, list[str]]) -> dict[str, float]:
    """Median verify() time per group of user names, sampling the groups in turn (rotating
    which goes first) so drift in machine load hits every group alike."""
    for names in groups.values():  # warm up the thread pool and caches
        await timed(ident, names[0], "warm-up")
    samples: dict[str, list[float]] = {g: [] for g in groups}
    order = list(groups)
    for i in range(SAMPLES):
        for g in order[i % len(order):] + order[:i % len(order)]:
            names = groups[g]
            samples[g].append(await timed(ident, names[i % len(names)], f"wrong-{i}"))
    return {g: statistics.median(s) for g, s in samples.items()}


def assert_in_band(result: dict[str, float], reference: str) -> None:
    for g, median in result.items():
        ratio = median / result[reference]
        assert BAND[0] <= ratio <= BAND[1], f"{g} vs {reference}: {ratio:.2f} ({result})"


async def test_unknown_user_costs_as_much_as_known_user(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "users", {
        "alice": hashed(b"alice-pw", 8),
        "bob": hashed(b"bob-pw", 8),
        "carol": hashed(b"carol-pw", 8),
        "dave": "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # unsupported format
        "erin": "$2b$08$truncated",  # malformed bcrypt
    })
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))
    assert ident.dummy_cost == 8
    result = await medians(ident, {
        "known": ["alice", "bob", "carol"],
        "unknown": [f"nobody{i}" for i in range(SAMPLES)],
        "unsupported": ["dave"],
        "malformed": ["erin"],
    })
    print("\ncost 8 medians (ms): " + ", ".join(f"{g} {m:.1f}" for g, m in result.items()))
    assert_in_band(result, "known")


async def test_dummy_follows_the_file_cost(tmp_path: Path) -> None:
    # Mostly cost 9 with one cost-6 straggler: the dummy takes the common cost, 9.
    path = write_htpasswd(tmp_path / "users", {
        "alice": hashed(b"alice-pw", 9),
        "bob": hashed(b"bob-pw", 9),
        "carol": hashed(b"carol-pw", 9),
        "dave": hashed(b"dave-pw", 6),
    })
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))
    assert ident.dummy_cost == 9
    result = await medians(ident, {
        "known": ["alice", "bob", "carol"],
        "unknown": [f"nobody{i}" for i in range(SAMPLES)],
    })
    print("\ncost 9 medians (ms): " + ", ".join(f"{g} {m:.1f}" for g, m in result.items()))
    assert_in_band(result, "known")


def h(cost: int) -> bytes:
    """A well-formed bcrypt hash at ``cost`` (the digest is not checked by dummy_cost)."""
    return b"$2b$%02d$" % cost + b"a" * 53


@pytest.mark.parametrize("costs,expected", [
    ([12, 12, 10], 12),
    ([10, 10, 12], 10),
    ([6, 9, 9, 9], 9),
    ([6, 6, 9], 6),
    ([10, 12], 12),  # tie: the higher cost
    ([8, 8, 11, 11, 5], 11),  # tie: the higher cost
    ([7], 7),
    ([], DEFAULT_DUMMY_COST),
])
def test_dummy_cost_is_the_mode(costs: list[int], expected: int) -> None:
    assert dummy_cost([h(c) for c in costs]) == expected


def test_dummy_cost_ignores_what_bcrypt_would_reject() -> None:
    assert dummy_cost([h(5), b"$2b$08$short", b"$2b$03$" + b"a" * 53, b"{SHA}abc"]) == 5
    assert dummy_cost([b"$apr1$x$y", b"plain"]) == DEFAULT_DUMMY_COST


@pytest.mark.parametrize("value,expected", [
    (b"$2b$12$" + b"a" * 53, 12),
    (b"$2a$04$" + b"./Az09" * 8 + b"abcde", 4),
    (b"$2y$31$" + b"a" * 53, 31),
    (b"$2b$03$" + b"a" * 53, None),
    (b"$2b$32$" + b"a" * 53, None),
    (b"$2b$4$" + b"a" * 53, None),
    (b"$2x$10$" + b"a" * 53, None),
    (b"$2b$10$" + b"a" * 52, None),
    (b"$2b$10$" + b"a" * 53 + b"\n", None),
    (b"$2b$10$" + b"!" * 53, None),
])
def test_bcrypt_cost(value: bytes, expected: int | None) -> None:
    assert bcrypt_cost(value) == expected


def test_dummy_cost_of_a_loaded_file(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "users", {
        "alice": hashed(b"a", 5), "bob": hashed(b"b", 5).replace("$2b$", "$2y$", 1),
        "carol": hashed(b"c", 4).replace("$2b$", "$2a$", 1), "dave": "{SHA}x",
    })
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))
    assert set(ident.users) == {"alice", "bob", "carol"}
    assert ident.dummy_cost == 5
    assert bcrypt_cost(ident._dummy) == 5


@pytest.mark.parametrize("text", ["", "# nobody yet\n", "bob:{SHA}x\ncarol:$apr1$a$b\n"])
def test_no_usable_hash_uses_the_default_cost(tmp_path: Path, text: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))
    assert ident.users == {}
    assert ident.dummy_cost == DEFAULT_DUMMY_COST == 12
    assert bcrypt_cost(ident._dummy) == 12


async def test_dummy_is_made_once_per_load(tmp_path: Path, monkeypatch: Any) -> None:
    assert not hasattr(identity, "_DUMMY_HASH")
    path = write_htpasswd(tmp_path / "users", {"alice": hashed(b"pw", 4), "bob": "{SHA}x",
                                               "erin": "$2b$04$truncated"})
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))

    def no_hashing(*args: object) -> bytes:
        raise AssertionError("bcrypt.hashpw called per request")
    monkeypatch.setattr(identity.bcrypt, "hashpw", no_hashing)
    for user in ("nobody", "bob", "erin", "alice"):
        assert await ident.verify(raw(user, "x"), user, "x") == (False, None)
    assert await ident.verify(raw("alice", "pw"), "alice", "pw") == (True, None)
