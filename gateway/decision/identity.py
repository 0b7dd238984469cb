"""First-factor sources: who is calling (HTTP Basic via htpasswd, an upstream probe, or a header)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import bcrypt

from gateway.config.settings import BasicIdentity, HeaderIdentity
from gateway.proxy import Forwarder, HeaderPolicy

log = logging.getLogger("stepgate")

_USER = re.compile(r"^[^\x00-\x1f\x7f:]{1,128}\Z")
# A complete modular-crypt bcrypt hash: variant, two-digit cost, 22-char salt + 31-char digest.
# Anything else (a truncated hash, cost outside 4..31) makes bcrypt.checkpw raise
# ValueError instantly, which would tell that user apart from an unknown one.
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
# Cost of the dummy hash when the file holds no usable hash to copy it from.
DEFAULT_DUMMY_COST = 12
BCRYPT_MAX_BYTES = 72


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost factor of a well-formed bcrypt hash, or None if bcrypt would reject it."""
    m = _BCRYPT.match(hashed.decode("ascii", "replace"))
    if m is None:
        return None
    cost = int(m.group(1))
    return cost if 4 <= cost <= 31 else None


def dummy_cost(hashes: Sequence[bytes]) -> int:
    """The cost a dummy hash needs so an unknown user costs as much as a typical real one:
    the most common cost among ``hashes`` (a tie goes to the higher cost, so the dummy errs
    towards being slow rather than cheap), or DEFAULT_DUMMY_COST when there are none."""
    counts = Counter(c for c in map(bcrypt_cost, hashes) if c is not None)
    if not counts:
        return DEFAULT_DUMMY_COST
    return max(counts, key=lambda c: (counts[c], c))


class Pending:
    """``known()``'s answer when only ``identify()`` can tell (a password to check)."""


PENDING = Pending()


class IdentitySource(Protocol):
    challenge: bytes | None  # a WWW-Authenticate value to send when nobody is identified

    def known(self, headers: Sequence[tuple[bytes, bytes]], client: str | None
              ) -> str | None | Pending:
        """The answer when it needs no waiting (a cached result, a header), else PENDING:
        the hot path then skips a coroutine."""
        ...

    async def identify(self, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> str | None: ...


def authorization(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    for k, v in headers:
        if k == b"authorization":
            return v
    return None


def parse_basic(value: bytes) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` value (RFC 7617), or None."""
    scheme, _, param = value.partition(b" ")
    if scheme.lower() != b"basic" or len(param) > 4096:
        return None
    try:
        text = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    if not sep or not _USER.match(user):
        return None
    return user, password


class _Cache:
    """Recent verification results keyed by a keyed BLAKE2 hash of the Authorization
    header, so neither the password nor an unkeyed hash of it stays in memory."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.clock = clock
        # A keyed hasher made once and copied per use: half the cost of keying one each time.
        self._hasher = hashlib.blake2b(key=os.urandom(32), digest_size=20)
        self._entries: dict[bytes, tuple[float, str | None]] = {}

    def key(self, authorization: bytes) -> bytes:
        h = self._hasher.copy()
        h.update(authorization)
        return h.digest()

    def lookup(self, authorization: bytes) -> tuple[float, str | None] | None:
        return self.get(self.key(authorization))

    def get(self, key: bytes) -> tuple[float, str | None] | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] < self.clock():
            return None
        return hit

    def put(self, key: bytes, user: str | None, ttl: float | None = None) -> None:
        if len(self._entries) > 10000:
            now = self.clock()
            self._entries = {k: e for k, e in self._entries.items() if e[0] >= now}
            if len(self._entries) > 10000:
                self._entries.clear()
        self._entries[key] = (self.clock() + (self.ttl if ttl is None else ttl), user)


class _CachedBasic:
    """HTTP Basic checked by ``verify`` and remembered for a while (see _Cache)."""

    cache: _Cache

    async def verify(self, raw: bytes, user: str, password: str) -> tuple[bool, float | None]:
        """Whether the password is good, and how long to remember that (None: the default)."""
        raise NotImplementedError

    def known(self, headers: Sequence[tuple[bytes, bytes]], client: str | None
              ) -> str | None | Pending:
        raw = authorization(headers)
        if raw is None:
            return None
        hit = self.cache.lookup(raw)
        return PENDING if hit is None else hit[1]

    async def identify(self, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> str | None:
        raw = authorization(headers)
        if raw is None:
            return None
        key = self.cache.key(raw)
        hit = self.cache.get(key)
        if hit is not None:
            return hit[1]
        creds = parse_basic(raw)
        if creds is None:
            return None
        ok, ttl = await self.verify(raw, *creds)
        result = creds[0] if ok else None
        self.cache.put(key, result, ttl)
        return result


class HtpasswdIdentity(_CachedBasic):
    challenge: bytes | None

    def __init__(self, settings: BasicIdentity, clock: Callable[[], float] = time.time) -> None:
        assert settings.htpasswd is not None
        self.path: Path = settings.htpasswd
        self.challenge = f'Basic realm="{settings.realm}", charset="UTF-8"'.encode()
        self.users = self._load(self.path)
        # Checked instead when the user is unknown (or their line is unusable), so that path
        # costs one bcrypt check at the same cost as a real user's and the response time does
        # not reveal which names exist (CWE-208; CVE-2016-6210 was this leak in OpenSSH, whose
        # dummy hash was cheaper than the real ones). A fixed cost would not do: a cost-10
        # dummy against cost-12 entries answers about four times faster. Made once here, as
        # hashing at cost 12 takes ~0.3 s.
        self.dummy_cost = dummy_cost(list(self.users.values()))
        self._dummy = bcrypt.hashpw(b"stepgate-dummy", bcrypt.gensalt(rounds=self.dummy_cost))
        odd = sum(bcrypt_cost(h) != self.dummy_cost for h in self.users.values())
        if odd:
            # Their check takes a different time from an unknown user's, which shows they exist.
            log.warning("htpasswd %s: %d user(s) hashed at a bcrypt cost other than %d; "
                        "rehash them at that cost so their existence does not show in "
                        "response times", self.path, odd, self.dummy_cost)
        self.cache = _Cache(60.0, clock)

    @staticmethod
    def _load(path: Path) -> dict[str, bytes]:
        users: dict[str, bytes] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, hashed = line.partition(":")
            encoded = hashed.replace("$2y$", "$2b$", 1).encode()
            # Lines in other formats ({SHA}, $apr1$, crypt) or with a malformed bcrypt hash are
            # left out, so such a user takes exactly the unknown-user path in verify().
            if bcrypt_cost(encoded) is not None:
                users[name] = encoded
        return users

    async def verify(self, raw: bytes, user: str, password: str) -> tuple[bool, float | None]:
        hashed = self.users.get(user)
        # bcrypt reads only the first 72 bytes (htpasswd hashed longer passwords so);
        # bcrypt >= 5 raises on longer input, which would answer 500 instead of 401.
        secret = password.encode()[:BCRYPT_MAX_BYTES]
        ok = await asyncio.to_thread(bcrypt.checkpw, secret, hashed or self._dummy)
        return ok and hashed is not None, None


class ProbeIdentity(_CachedBasic):
    """Asks the upstream whether the client's credentials are good (2xx = yes)."""

    challenge: bytes | None

    def __init__(self, settings: BasicIdentity, forwarder: Forwarder,
                 clock: Callable[[], float] = time.time) -> None:
        assert settings.probe_path is not None
        self.path = settings.probe_path
        self.forwarder = forwarder
        self.challenge = f'Basic realm="{settings.realm}", charset="UTF-8"'.encode()
        self.cache = _Cache(settings.probe_cache_ttl, clock)

    async def verify(self, raw: bytes, user: str, password: str) -> tuple[bool, float | None]:
        resp = await self.forwarder.send("GET", self.path,
                                         [("authorization", raw.decode("latin-1"))], None)
        try:
            ok = 200 <= resp.status < 300
        finally:
            await resp.aclose()
        # Failures are cached briefly too, so a password guesser cannot hammer the upstream.
        return ok, None if ok else min(self.cache.ttl, 5.0)


class BackendIdentity:
    """`verify: backend`: the user name is taken as given; the upstream checks the password."""

    challenge: bytes | None

    def __init__(self, settings: BasicIdentity) -> None:
        self.challenge = f'Basic realm="{settings.realm}", charset="UTF-8"'.encode()

    def known(self, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> str | None:
        raw = authorization(headers)
        creds = parse_basic(raw) if raw is not None else None
        return creds[0] if creds else None

    async def identify(self, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> str | None:
        return self.known(headers, client)


class HeaderIdentitySource:
    """A user header set by a front proxy; believed only from trusted_proxies."""

    challenge: bytes | None

    def __init__(self, settings: HeaderIdentity, headers: HeaderPolicy) -> None:
        self.name = settings.name.lower().encode()
        self.policy = headers
        self.challenge = None

    async def identify(self, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> str | None:
        return self.known(headers, client)

    def known(self, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> str | None:
        if not self.policy.is_trusted(client):
            return None
        values = [v for k, v in headers if k == self.name]
        if len(values) != 1:
            return None
        try:
            user = values[0].decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        return user if _USER.match(user) else None


Builder = Callable[[Any, Any, Forwarder, HeaderPolicy, Callable[[], float]], IdentitySource]

# The identity sources by the name the configuration gives them (docs/configuration.md); each builder takes
# (basic settings, header settings, forwarder, header policy, clock).
SOURCES: dict[str, Builder] = {
    "header": lambda basic, header, fw, hp, clock: HeaderIdentitySource(header, hp),
    "htpasswd": lambda basic, header, fw, hp, clock: HtpasswdIdentity(basic, clock),
    "upstream_probe": lambda basic, header, fw, hp, clock: ProbeIdentity(basic, fw, clock),
    "backend": lambda basic, header, fw, hp, clock: BackendIdentity(basic),
}


def source_name(basic: BasicIdentity | None, header: HeaderIdentity | None) -> str | None:
    """Which registered source the identity settings name (None: no identity source)."""
    if header is not None:
        return "header"
    if basic is None:
        return None
    if basic.htpasswd is not None:
        return "htpasswd"
    if basic.probe_path is not None:
        return "upstream_probe"
    return "backend"


def make_identity(basic: BasicIdentity | None, header: HeaderIdentity | None,
                  forwarder: Forwarder, header_policy: HeaderPolicy,
                  clock: Callable[[], float] = time.time) -> IdentitySource | None:
    name = source_name(basic, header)
    if name is None:
        return None
    return SOURCES[name](basic, header, forwarder, header_policy, clock)
