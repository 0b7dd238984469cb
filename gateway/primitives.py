"""Small pieces with one home each: constant-time comparison, timestamps, bounded caches,
request ids."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import itertools
import re
import secrets
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_KEY = b"stepgate constant-time comparison"


def same_secret(given: bytes | str, expected: bytes | str) -> bool:
    """Whether two secrets are equal, in time independent of where they differ and of
    their lengths: both sides are HMAC'd first, then compared with compare_digest."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(hmac.new(_KEY, a, hashlib.sha256).digest(),
                               hmac.new(_KEY, b, hashlib.sha256).digest())


@functools.lru_cache(maxsize=1024)
def iso8601(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC timestamp (RFC 3339), to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def window_of(now: float, window: float) -> tuple[int, float]:
    """The fixed window ``now`` falls in: its number and when it ends (rate limits)."""
    n = int(now // window)
    return n, (n + 1) * window


class BoundedCache(Generic[K, V]):
    """A dict that forgets everything once it holds ``size`` entries: the caches on the
    hot path stay bounded whatever keys clients send, at the cost of a cold start."""

    __slots__ = ("data", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.data: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self.data.get(key)

    def put(self, key: K, value: V) -> None:
        if len(self.data) >= self.size:
            self.data.clear()
        self.data[key] = value

    def pop(self, key: K) -> None:
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)


class Networks:
    """Peer addresses inside a list of networks (trusted proxies, forward-auth callers),
    answered from a bounded cache. An IPv4 peer of a dual-stack listener, reported as
    ::ffff:a.b.c.d, is judged as its IPv4 address."""

    __slots__ = ("nets", "_seen")

    def __init__(self, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.nets = tuple(nets)
        self._seen: BoundedCache[str, bool] = BoundedCache(10000)

    def __bool__(self) -> bool:
        return bool(self.nets)

    def __contains__(self, peer: str | None) -> bool:
        if not peer or not self.nets:
            return False
        hit = self._seen.data.get(peer)
        if hit is None:
            try:
                addr = ipaddress.ip_address(peer)
            except ValueError:
                hit = False
            else:
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                hit = any(addr in net for net in self.nets)
            self._seen.put(peer, hit)
        return hit


# The id of the request being served, set where a request enters (http/app.py, the
# server's quick answers) and read where a line or an answer is written about it: audit
# events, problem+json bodies, the access log, the upstream request.
REQUEST_ID: ContextVar[str | None] = ContextVar("stepgate_request_id", default=None)
# A request id believed from a trusted proxy: short, and nothing a log line or header
# could carry in two ways.
REQUEST_ID_SHAPE = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_next_id = itertools.count(1).__next__
_process = secrets.token_hex(6)


def new_request_id() -> str:
    """A request id unique across processes and restarts (a random per-process part and a
    counter), cheap enough for every request."""
    return f"{_process}-{_next_id():x}"

