"""Where the client keeps ``route`` and ``session`` tokens between requests: a small
protocol keyed by what a token authorizes (gateway origin, user, rule), and the in-memory
default. Request-bound tokens are single use and never kept."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, runtime_checkable

# A token is not sent when it expires within this many seconds: it could expire on the way.
EXPIRY_MARGIN = 1.0
KEPT_BINDINGS = ("route", "session")


class TokenKey(NamedTuple):
    """What a kept token authorizes, as the gateway's 401 and verify answers describe it."""

    origin: str  # scheme://host:port of the gateway
    user: str    # the Basic user name, or a digest of another Authorization header
    rule: str    # the rule the 401 named


@dataclass(frozen=True)
class CachedToken:
    """A token as the verify endpoint issued it; ``expires_at`` is wall-clock time so a
    persistent cache can share it between processes."""

    value: str
    header: str
    binding: str
    expires_at: float
    uses_left: int | None = None  # None: unlimited within the lifetime (session binding)

    @classmethod
    def issued(cls, doc: Mapping[str, Any], now: float) -> CachedToken:
        """From a verify answer ``{"token", "token_header", "expires_in", "binding", "uses"}``."""
        uses = doc.get("uses")
        return cls(value=str(doc["token"]), header=str(doc.get("token_header") or "X-Stepgate-Token"),
                   binding=str(doc.get("binding") or "request"),
                   expires_at=now + float(doc.get("expires_in") or 0),
                   uses_left=int(uses) if isinstance(uses, int) else None)

    def usable(self, now: float) -> bool:
        return self.expires_at - EXPIRY_MARGIN > now and (self.uses_left is None or self.uses_left > 0)

    def spent(self) -> CachedToken:
        """The token after one counted use."""
        return self if self.uses_left is None else replace(self, uses_left=self.uses_left - 1)

    def __repr__(self) -> str:  # never show the token itself, not even in a traceback
        return (f"CachedToken(binding={self.binding!r}, header={self.header!r}, "
                f"expires_at={self.expires_at!r}, uses_left={self.uses_left!r})")


@runtime_checkable
class TokenCache(Protocol):
    """Where tokens are kept. The client checks expiry and uses itself and calls ``drop``
    for a token the gateway refused; an implementation only stores. Implementations shared
    between threads must be thread-safe."""

    def get(self, key: TokenKey) -> CachedToken | None: ...

    def put(self, key: TokenKey, token: CachedToken) -> None: ...

    def drop(self, key: TokenKey) -> None: ...


class MemoryTokenCache:
    """The default: a dict in this process, thread-safe, forgetting expired tokens."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._tokens: dict[TokenKey, CachedToken] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def get(self, key: TokenKey) -> CachedToken | None:
        with self._lock:
            return self._tokens.get(key)

    def put(self, key: TokenKey, token: CachedToken) -> None:
        now = self._clock()
        with self._lock:
            for k in [k for k, t in self._tokens.items() if not t.usable(now)]:
                del self._tokens[k]
            self._tokens[key] = token

    def drop(self, key: TokenKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


class RouteMemo:
    """Which rule a (gateway, user, method, path) was last challenged for, so the next
    request there carries the kept token at once: no 401 round trip, and a streamed body
    goes through. Bounded (least recently used first out); a hint, never a decision —
    the gateway's answer always wins."""

    def __init__(self, size: int = 512) -> None:
        self._rules: OrderedDict[tuple[str, str, str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def rule(self, origin: str, user: str, method: str, path: str) -> str | None:
        with self._lock:
            key = (origin, user, method, path)
            rule = self._rules.get(key)
            if rule is not None:
                self._rules.move_to_end(key)
            return rule

    def learn(self, origin: str, user: str, method: str, path: str, rule: str | None) -> None:
        """Remember ``rule`` for the request, or forget it (``None``)."""
        key = (origin, user, method, path)
        with self._lock:
            if rule is None:
                self._rules.pop(key, None)
                return
            self._rules[key] = rule
            self._rules.move_to_end(key)
            while len(self._rules) > self._size:
                self._rules.popitem(last=False)
