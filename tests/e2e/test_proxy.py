"""End to end over sockets: a real upstream process, a real gateway process, raw requests.

The invariant under test: the path the policy evaluated is exactly the path the
upstream receives, and nothing that could be read two ways reaches it at all.
"""

from __future__ import annotations

import gzip
import hashlib

import httpx
import pytest

from ..conftest import GatewayProcess, Upstream, free_port
from ..rawhttp import get, request

pytestmark = pytest.mark.e2e

REJECT = 400
# (request target, expected status, target the upstream must receive or None)
PATH_TABLE = [
    ("/public/a", 200, "/public/a"),
    ("/admin/x", 403, None),
    ("/admin", 403, None),
    ("/admin/", 403, None),
    ("//admin/x", REJECT, None),
    ("/public//x", REJECT, None),
    ("/public/./x", REJECT, None),
    ("/public/../admin/x", REJECT, None),
    ("/public/%2e%2e/admin/x", REJECT, None),
    ("/public/%2E%2E/admin/x", REJECT, None),
    ("/public/%2e./admin/x", REJECT, None),
    ("/public/%252e%252e/admin/x", REJECT, None),
    ("/public%2fadmin", REJECT, None),
    ("/public/%2F../admin", REJECT, None),
    ("/public/%5c../admin", REJECT, None),
    ("/public\\..\\admin", REJECT, None),
    ("/public/%00/x", REJECT, None),
    ("/admin;jsessionid=1/x", REJECT, None),
    ("/public/x;/../../admin", REJECT, None),
    ("/public/%3b/admin", REJECT, None),
    ("/public/%zz", REJECT, None),
    ("/%61dmin/x", 403, None),  # decodes to /admin/x: the deny rule must see that
    ("/ADMIN/x", 200, "/ADMIN/x"),  # case-sensitive by default: a different path upstream
    ("/public?x=/admin", 200, "/public?x=/admin"),
    ("/public/x?../../admin", 200, "/public/x?../../admin"),
    ("/public/caf%C3%A9", 200, "/public/caf%C3%A9"),
    ("/public/x#/../../admin", REJECT, None),  # a raw '#' never reaches matching
    ("/public/x?a=1#frag", REJECT, None),
    ("/public/%ef%bc%8e%ef%bc%8e/admin/x", REJECT, None),  # fullwidth dots (NFKC '..')
    ("/%EF%BD%81dmin/x", REJECT, None),  # fullwidth 'a' (NFKC 'admin')
]


@pytest.mark.parametrize("target,status,received", PATH_TABLE)
def test_upstream_receives_exactly_the_evaluated_path(
        gateway: GatewayProcess, upstream: Upstream, target: str, status: int,
        received: str | None) -> None:
    upstream.clear()
    resp = get(gateway.port, target)
    assert resp.status == status, resp.body
    records = upstream.records()
    if received is None:
        assert records == []
        if status >= 400:
            assert resp.header("content-type") == "application/problem+json"
    else:
        assert [r["target"] for r in records] == [received]


def test_protected_route_is_not_bypassed_by_path_variants(gateway: GatewayProcess,
                                                          upstream: Upstream) -> None:
    upstream.clear()
    for target, status in [("/accounts/1/transfers", 401), ("/accounts/1/transfers/", 401),
                           ("/accounts/1//transfers", 400), ("/accounts/1/./transfers", 400),
                           ("/accounts/%31/transfers", 401), ("/accounts/1/transfers;x", 400)]:
        assert get(gateway.port, target, method="POST").status == status, target
    assert upstream.records() == []


def test_case_insensitive_option_closes_case_variants(make_gateway, upstream: Upstream) -> None:
    gw = make_gateway(paths={"case_insensitive": True})
    upstream.clear()
    assert get(gw.port, "/ADMIN/x").status == 403
    assert get(gw.port, "/Admin").status == 403
    assert get(gw.port, "/PUBLIC/x").status == 200
    assert [r["target"] for r in upstream.records()] == ["/PUBLIC/x"]


def test_normalize_option_forwards_the_normalised_path(make_gateway, upstream: Upstream) -> None:
    gw = make_gateway(paths={"normalize": True})
    upstream.clear()
    assert get(gw.port, "//admin/x").status == 403
    assert get(gw.port, "/public/../admin/x").status == 403
    assert get(gw.port, "/public/%2e%2e/admin").status == 400  # encoded dots stay rejected
    assert get(gw.port, "/public//a/./b").status == 200
    assert [r["target"] for r in upstream.records()] == ["/public/a/b"]


def _headers(record: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in record["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_hop_by_hop_and_own_headers_never_reach_upstream(gateway: GatewayProcess,
                                                         upstream: Upstream) -> None:
    upstream.clear()
    resp = get(gateway.port, "/public/h", {
        "Connection": "close, X-Drop-Me, X-Stepgate-User",
        "X-Drop-Me": "secret",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Upgrade": "websocket",
        "X-Stepgate-User": "mallory",
        "X_Stepgate_User": "mallory",
        "X-Stepgate-Rule": "public",
        "X-Stepgate-Factor": "totp",
        "X-Stepgate-Verified-At": "now",
        "X-Stepgate-Token": "forged",
        "X_Stepgate_Token": "forged",
        "X-Forwarded-For": "10.9.9.9",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=10.9.9.9",
        "Accept-Encoding": "br;q=1, identity;q=0.5",
        "Cookie": "session=1",
        "Authorization": "Bearer legacy",
    })
    assert resp.status == 200
    (rec,) = upstream.records()
    h = _headers(rec)
    for name in ("connection", "x-drop-me", "keep-alive", "proxy-connection", "te", "upgrade",
                 "x-stepgate-user", "x_stepgate_user", "x-stepgate-rule", "x-stepgate-factor",
                 "x-stepgate-verified-at", "x-stepgate-token", "x_stepgate_token", "forwarded"):
        assert name not in h, name
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-host"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["via"] == ["1.1 stepgate"]
    assert h["accept-encoding"] == ["br;q=1, identity;q=0.5"]
    assert h["cookie"] == ["session=1"]
    assert h["authorization"] == ["Bearer legacy"]
    assert "user-agent" not in h and "accept" not in h


def test_trusted_proxy_forwarding_headers_are_kept(make_gateway, upstream: Upstream) -> None:
    gw = make_gateway(trusted_proxies=["127.0.0.0/8"])
    upstream.clear()
    get(gw.port, "/public/t", {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
                               "X-Forwarded-Host": "api.example"})
    h = _headers(upstream.records()[0])
    assert h["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-forwarded-host"] == ["api.example"]


def test_responses_pass_untouched(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    r = get(gateway.port, "/cookies")
    assert r.status == 302  # not followed
    assert r.header("location") == "/elsewhere"
    assert [v for k, v in r.headers if k.lower() == "set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    get(gateway.port, "/public/after-cookie")  # no cookie jar in the gateway
    assert "cookie" not in _headers(upstream.records()[1])
    raw = get(gateway.port, "/gzip", {"Accept-Encoding": "gzip"})
    assert raw.header("content-encoding") == "gzip"
    assert gzip.decompress(raw.body) == b"hello gzip"
    hop = get(gateway.port, "/hop")
    assert hop.header("x-secret-hop") is None and hop.header("keep-alive") is None


def test_upstream_errors_are_problems(make_gateway, gateway: GatewayProcess) -> None:
    r = httpx.get(f"{gateway.url}/slow", timeout=10)
    assert r.status_code == 504
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "urn:stepgate:problem:upstream-timeout"
    dead = make_gateway(upstream_url=f"http://127.0.0.1:{free_port()}")  # nobody listens
    r = httpx.get(f"{dead.url}/public/x", timeout=10)
    assert r.status_code == 502
    assert r.json()["type"] == "urn:stepgate:problem:upstream-unavailable"


def test_conflicting_framing_is_rejected(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    head = (b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    resp = request(gateway.port, head, b"0\r\n\r\n")
    assert resp.status == 400
    assert resp.header("content-type") == "application/problem+json"
    assert resp.json()["type"] == "urn:stepgate:problem:bad-framing"
    head = (b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n")
    resp = request(gateway.port, head, b"abcde")
    assert resp.status == 400 and resp.json()["status"] == 400
    assert upstream.records() == []


def test_streaming_upload_and_download(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    size = 8 * 1024 * 1024
    block = b"y" * 65536

    def gen():
        for _ in range(size // len(block)):
            yield block
    r = httpx.post(f"{gateway.url}/public/upload", content=gen(), timeout=30)
    assert r.status_code == 200
    rec = upstream.records()[0]
    assert rec["body_len"] == size
    assert rec["body_sha256"] == hashlib.sha256(block * (size // len(block))).hexdigest()
    with httpx.stream("GET", f"{gateway.url}/big?size={size}", timeout=30) as resp:
        assert resp.headers["content-length"] == str(size)
        assert sum(len(c) for c in resp.iter_raw()) == size


def test_chunked_request_body_is_forwarded(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    head = (b"POST /public/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n")
    resp = request(gateway.port, head, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert resp.status == 200
    assert upstream.records()[0]["body_len"] == 11


def test_deny_and_default_deny(make_gateway, upstream: Upstream) -> None:
    gw = make_gateway(rules={"rules": [{"name": "open", "match": {"paths": ["/public/**"]},
                                        "action": "allow"}]})
    upstream.clear()
    r = httpx.get(f"{gw.url}/anything")
    assert r.status_code == 403
    assert r.json()["type"] == "urn:stepgate:problem:forbidden"
    assert upstream.records() == []


def test_reserved_prefix_is_never_forwarded(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    for target in ["/.stepgate/unknown", "/.stepgate/factors/x/y/z", "/.stepgate"]:
        r = get(gateway.port, target)
        assert r.status in (401, 404, 405), target
        assert r.header("content-type") == "application/problem+json"
    assert upstream.records() == []
