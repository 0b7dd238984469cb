"""First-factor sources: htpasswd, upstream probe (cached), backend, trusted header."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import bcrypt
import httpx
import pytest

from gateway.config.settings import BasicIdentity, HeaderIdentity
from gateway.decision.identity import (
    BackendIdentity,
    HeaderIdentitySource,
    HtpasswdIdentity,
    ProbeIdentity,
    parse_basic,
)
from gateway.proxy import HeaderPolicy, HttpxForwarder

pytestmark = pytest.mark.anyio


def auth(user: str, password: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode()))]


@pytest.mark.parametrize("value,expected", [
    (b"Basic " + base64.b64encode(b"alice:pw"), ("alice", "pw")),
    (b"basic " + base64.b64encode(b"alice:p:w"), ("alice", "p:w")),
    (b"Basic " + base64.b64encode("zoë:pw".encode()), ("zoë", "pw")),
    (b"Bearer abc", None),
    (b"Basic !!!", None),
    (b"Basic " + base64.b64encode(b"nocolon"), None),
    (b"Basic " + base64.b64encode(b":pw"), None),
    (b"Basic " + base64.b64encode(b"al\nice:pw"), None),
    (b"Basic " + base64.b64encode(b"\xff:pw"), None),
])
def test_parse_basic(value: bytes, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


async def test_htpasswd(tmp_path: Any) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n"
                    "# comment\nbob:{SHA}notbcrypt\n")
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))
    assert await ident.identify(auth("alice", "pw"), None) == "alice"
    assert await ident.identify(auth("alice", "pw"), None) == "alice"  # cached
    assert await ident.identify(auth("alice", "wrong"), None) is None
    assert await ident.identify(auth("bob", "x"), None) is None  # unsupported hash: no login
    assert await ident.identify(auth("carol", "pw"), None) is None
    assert await ident.identify([], None) is None
    assert ident.challenge == b'Basic realm="r", charset="UTF-8"'


async def test_htpasswd_passwords_past_72_bytes(tmp_path: Any) -> None:
    # bcrypt reads 72 bytes; bcrypt 5 raises on more, which must be a 401, never a 500.
    long = "p" * 72
    path = tmp_path / "users"
    path.write_text(f"alice:{bcrypt.hashpw(long.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    ident = HtpasswdIdentity(BasicIdentity(realm="r", htpasswd=path))
    assert await ident.identify(auth("alice", long + "extra"), None) == "alice"
    assert await ident.identify(auth("alice", "q" * 200), None) is None
    assert await ident.identify(auth("nobody", "q" * 200), None) is None


async def test_upstream_probe_is_asked_once_per_credentials() -> None:
    calls: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("authorization", ""))
        ok = request.headers.get("authorization") == auth("alice", "pw")[0][1].decode()
        return httpx.Response(200 if ok and request.url.path == "/me" else 401)
    fwd = HttpxForwarder("http://up.test", transport=httpx.MockTransport(upstream))
    ident = ProbeIdentity(BasicIdentity(realm="r", probe_path="/me", probe_cache_ttl=30), fwd)
    assert await ident.identify(auth("alice", "pw"), None) == "alice"
    assert await ident.identify(auth("alice", "pw"), None) == "alice"
    assert await ident.identify(auth("alice", "bad"), None) is None
    assert await ident.identify(auth("alice", "bad"), None) is None
    assert len(calls) == 2  # one probe per distinct credentials
    await fwd.aclose()


async def test_backend_trusts_the_name() -> None:
    ident = BackendIdentity(BasicIdentity(realm="r", verify_backend=True))
    assert await ident.identify(auth("alice", "anything"), None) == "alice"


async def test_header_identity_only_from_trusted_proxies() -> None:
    policy = HeaderPolicy([], [ipaddress.ip_network("10.0.0.0/8")])
    ident = HeaderIdentitySource(HeaderIdentity("X-Remote-User"), policy)
    hdrs = [(b"x-remote-user", b"alice")]
    assert await ident.identify(hdrs, "10.1.2.3") == "alice"
    assert await ident.identify(hdrs, "192.0.2.1") is None
    assert await ident.identify(hdrs, None) is None
    assert await ident.identify(hdrs * 2, "10.1.2.3") is None  # ambiguous
    assert await ident.identify([(b"x-remote-user", b"a:b")], "10.1.2.3") is None
