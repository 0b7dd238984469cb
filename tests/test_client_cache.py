"""The client's token cache: what a kept token is, when it may be sent, and the memory of
which rule a request was challenged for."""

from __future__ import annotations

import pytest

from gateway.client import CachedToken, MemoryTokenCache, TokenCache, TokenKey
from gateway.client._cache import EXPIRY_MARGIN, RouteMemo

KEY = TokenKey("http://gw.test", "alice", "settings")


def token(expires_at: float = 1000.0, uses: int | None = None, value: str = "v1") -> CachedToken:
    return CachedToken(value, "X-Stepgate-Token", "session", expires_at, uses)


def test_issued_from_a_verify_answer() -> None:
    t = CachedToken.issued({"token": "abc", "token_header": "X-Step", "expires_in": 120,
                            "binding": "route", "uses": 3, "status": "verified"}, now=500.0)
    assert (t.value, t.header, t.binding, t.expires_at, t.uses_left) == ("abc", "X-Step", "route",
                                                                         620.0, 3)
    unlimited = CachedToken.issued({"token": "abc", "token_header": "X-Step", "expires_in": 60,
                                    "binding": "session", "uses": None}, now=0.0)
    assert unlimited.uses_left is None


@pytest.mark.parametrize(("expires_at", "uses", "now", "usable"), [
    (100.0, None, 50.0, True),
    (100.0, None, 100.0 - EXPIRY_MARGIN, False),   # expiring on the way counts as expired
    (100.0, None, 100.0 - EXPIRY_MARGIN - 0.01, True),
    (100.0, None, 150.0, False),
    (100.0, 1, 50.0, True),
    (100.0, 0, 50.0, False),                       # uses ran out
])
def test_usable(expires_at: float, uses: int | None, now: float, usable: bool) -> None:
    assert token(expires_at, uses).usable(now) is usable


def test_spent_counts_down_only_counted_tokens() -> None:
    assert token(uses=2).spent().uses_left == 1
    assert token(uses=None).spent().uses_left is None


def test_repr_never_shows_the_token() -> None:
    t = token(value="s3cr3t-token-value")
    assert "s3cr3t" not in repr(t) and "s3cr3t" not in str(t)


def test_memory_cache_get_put_drop() -> None:
    cache = MemoryTokenCache(clock=lambda: 0.0)
    assert isinstance(cache, TokenCache)
    assert cache.get(KEY) is None
    cache.put(KEY, token(value="a"))
    other = KEY._replace(user="bob")
    cache.put(other, token(value="b"))
    assert cache.get(KEY) == token(value="a") and cache.get(other) == token(value="b")
    assert cache.get(KEY._replace(origin="http://other.test")) is None
    assert cache.get(KEY._replace(rule="reports")) is None
    cache.drop(KEY)
    cache.drop(KEY)  # dropping what is not there is fine
    assert cache.get(KEY) is None and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_memory_cache_forgets_expired_tokens_as_it_goes() -> None:
    now = [0.0]
    cache = MemoryTokenCache(clock=lambda: now[0])
    cache.put(KEY, token(expires_at=10.0))
    cache.put(KEY._replace(rule="used"), token(expires_at=100.0, uses=0))
    now[0] = 20.0
    cache.put(KEY._replace(rule="new"), token(expires_at=100.0))
    assert cache.get(KEY) is None and cache.get(KEY._replace(rule="used")) is None
    assert len(cache) == 1


def test_route_memo_learns_forgets_and_stays_bounded() -> None:
    memo = RouteMemo(size=2)
    memo.learn("o", "u", "GET", "/a", "settings")
    memo.learn("o", "u", "GET", "/b", "reports")
    assert memo.rule("o", "u", "GET", "/a") == "settings"  # /a is now the most recent
    assert memo.rule("o", "u", "POST", "/a") is None
    assert memo.rule("o", "bob", "GET", "/a") is None
    memo.learn("o", "u", "GET", "/c", "settings")            # evicts /b, the least recent
    assert memo.rule("o", "u", "GET", "/b") is None
    assert memo.rule("o", "u", "GET", "/a") == "settings"
    memo.learn("o", "u", "GET", "/a", None)
    assert memo.rule("o", "u", "GET", "/a") is None
