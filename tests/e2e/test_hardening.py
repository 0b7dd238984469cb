"""Regression tests for what an outside attack got through, end to end over real sockets:
ambiguous credentials, spoofed forwarding and rewrite headers, single-use tokens delivered
twice, body meaning outside the binding, a stalled store, an exhausted upstream pool,
cross-site form posts, revocation, and a lost store."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import DATA, SIGNING, GatewayProcess, Upstream, basic
from ..rawhttp import get, request
from .test_handshake import P, _token, enrol

pytestmark = pytest.mark.e2e
ADMIN_KEY = "admin-key-for-hardening-tests-0123"


def header_names(record: dict[str, Any]) -> list[str]:
    return [k.lower() for k, _ in record["headers"]]


def db_path(gw: GatewayProcess) -> Path:
    return gw.config.parent / "state" / "stepgate.db"


# ---------------------------------------------------------------- 1. ambiguous requests

AMBIGUOUS = [
    ("two Authorization fields", "GET /public/x HTTP/1.1\r\nHost: a\r\n"
     "Authorization: Basic YWxpY2U6eA==\r\nAuthorization: Basic Ym9iOnk=\r\n"),
    ("two token fields", "GET /public/x HTTP/1.1\r\nHost: a\r\n"
     "X-Stepgate-Token: one\r\nX-Stepgate-Token: two\r\n"),
    ("two token fields, case differs", "GET /public/x HTTP/1.1\r\nHost: a\r\n"
     "x-stepgate-token: one\r\nX-STEPGATE-TOKEN: two\r\n"),
    ("two Host fields", "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n"),
    ("no Host on HTTP/1.1", "GET /public/x HTTP/1.1\r\n"),
    ("empty Host", "GET /public/x HTTP/1.1\r\nHost: \r\n"),
    ("Host with a path", "GET /public/x HTTP/1.1\r\nHost: a/../admin\r\n"),
    ("Host with a quote", "GET /public/x HTTP/1.1\r\nHost: a\"b\r\n"),
    ("Host with userinfo", "GET /public/x HTTP/1.1\r\nHost: user@a\r\n"),
    ("Host with a bad port", "GET /public/x HTTP/1.1\r\nHost: a:80x\r\n"),
    ("two Authorization fields on own endpoints", "GET /.stepgate/factors HTTP/1.1\r\n"
     "Host: a\r\nAuthorization: Basic YWxpY2U6eA==\r\nAuthorization: Basic Ym9iOnk=\r\n"),
    ("two Authorization fields on a protected route", "POST /accounts/1/transfers HTTP/1.1\r\n"
     "Host: a\r\nAuthorization: Basic YWxpY2U6eA==\r\nAuthorization: Basic Ym9iOnk=\r\n"
     "Content-Length: 0\r\n"),
]


@pytest.mark.parametrize("name,head", AMBIGUOUS, ids=[a[0] for a in AMBIGUOUS])
def test_ambiguous_requests_are_refused_and_never_forwarded(
        gateway: GatewayProcess, upstream: Upstream, name: str, head: str) -> None:
    upstream.clear()
    resp = request(gateway.port, (head + "Connection: close\r\n\r\n").encode())
    assert resp.status == 400, (name, resp.body)
    assert resp.header("content-type") == "application/problem+json"
    assert upstream.records() == []


def test_valid_hosts_pass_and_http10_may_omit_host(gateway: GatewayProcess,
                                                   upstream: Upstream) -> None:
    for host in ("example.com", "example.com:8443", "127.0.0.1:80", "[::1]:8080", "a_b.local"):
        upstream.clear()
        resp = request(gateway.port, f"GET /public/x HTTP/1.1\r\nHost: {host}\r\n"
                       "Connection: close\r\n\r\n".encode())
        assert resp.status == 200, host
        (rec,) = upstream.records()
        assert dict((k.lower(), v) for k, v in rec["headers"])["x-forwarded-host"] == host
    upstream.clear()
    resp = request(gateway.port, b"GET /public/x HTTP/1.0\r\n\r\n")
    assert resp.status == 200
    assert "x-forwarded-host" not in header_names(upstream.records()[0])


# ---------------------------------------------------------------- 2. spoofed headers

SPOOFABLE = [
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
    "X-Forwarded-Prefix", "X-Forwarded-Uri", "X-Forwarded-Server", "Forwarded", "X-Real-IP",
    "X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-HTTP-Method-Override",
    "X-HTTP-Method", "X-Method-Override",
    "X-Stepgate-User", "X-Stepgate-Rule", "X-Stepgate-Factor", "X-Stepgate-Verified-At",
    "X-Stepgate-Token",
]


def spellings(name: str) -> list[str]:
    under = name.replace("-", "_")
    return [name, name.lower(), name.upper(), under, under.lower(),
            name.replace("-", "_", 1)]  # mixed: X_Forwarded-For


@pytest.mark.parametrize("name", SPOOFABLE)
def test_forwarding_and_rewrite_headers_from_untrusted_peers_never_arrive(
        gateway: GatewayProcess, upstream: Upstream, name: str) -> None:
    for spelled in spellings(name):
        upstream.clear()
        resp = get(gateway.port, "/public/x", {spelled: "spoofed-value"})
        assert resp.status == 200, spelled
        (rec,) = upstream.records()
        arrived = [(k, v) for k, v in rec["headers"] if "spoofed-value" in v]
        assert arrived == [], (spelled, arrived)


def test_trusted_proxies_keep_forwarding_fields_but_never_rewrite_fields(
        make_gateway: Any, upstream: Upstream) -> None:
    gw = make_gateway(trusted_proxies=["127.0.0.1/32"])
    upstream.clear()
    resp = get(gw.port, "/public/x", {
        "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Prefix": "/api",
        "X-Original-URL": "/admin/x", "X-HTTP-Method-Override": "DELETE",
        "X_Forwarded_For": "198.51.100.1"})
    assert resp.status == 200
    h = {k.lower(): v for k, v in upstream.records()[0]["headers"]}
    assert h["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert h["x-forwarded-prefix"] == "/api"
    for name in ("x-original-url", "x-http-method-override", "x_forwarded_for"):
        assert name not in h


# ---------------------------------------------------------------- 3. single use, really

def test_a_timed_out_request_spends_its_token(gateway: GatewayProcess,
                                              upstream: Upstream) -> None:
    device = enrol(gateway, "rupert")
    token, info = _token(gateway, "rupert", device, "GET", "/status/200")
    assert info["binding"] == "route" and info["uses"] == 1
    h = {**basic("rupert"), "X-Stepgate-Token": token}
    upstream.clear()
    slow = httpx.get(f"{gateway.url}/status/200?sleep=2", headers=h, timeout=10)
    assert slow.status_code == 504  # read_timeout is 1 s; the upstream did get the request
    retry = httpx.get(f"{gateway.url}/status/200", headers=h)
    assert retry.status_code == 401 and retry.json()["detail"] == "token already used"
    assert [r["target"] for r in upstream.records()] == ["/status/200?sleep=2"]


def test_a_connection_reset_after_sending_spends_its_token(gateway: GatewayProcess,
                                                          upstream: Upstream) -> None:
    device = enrol(gateway, "sybil")
    token, _ = _token(gateway, "sybil", device, "GET", "/status/200")
    h = {**basic("sybil"), "X-Stepgate-Token": token}
    upstream.clear()
    dropped = httpx.get(f"{gateway.url}/status/200?drop=1", headers=h)
    assert dropped.status_code == 502
    assert dropped.headers["content-type"] == "application/problem+json"
    retry = httpx.get(f"{gateway.url}/status/200", headers=h)
    assert retry.status_code == 401
    assert [r["target"] for r in upstream.records()] == ["/status/200?drop=1"]


def test_a_store_failure_while_settling_keeps_the_token_spent(
        make_gateway: Any, upstream: Upstream) -> None:
    gw = make_gateway(store_timeout="300ms")
    device = enrol(gw, "trent")
    token, _ = _token(gw, "trent", device, "GET", "/status/200")
    h = {**basic("trent"), "X-Stepgate-Token": token}
    upstream.clear()
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(
        httpx.get(f"{gw.url}/status/200?sleep=0.8", headers=h, timeout=10)))
    first.start()
    deadline = time.monotonic() + 5
    while not upstream.records() and time.monotonic() < deadline:
        time.sleep(0.02)  # the use is reserved once the request reached the upstream
    lock = sqlite3.connect(db_path(gw), timeout=5)
    lock.execute("BEGIN IMMEDIATE")  # the store cannot commit the use while we hold this
    try:
        first.join(10)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # The upstream acted, so its answer is delivered; the use stays reserved (fail closed).
    assert answers[0].status_code == 200
    for _ in range(3):
        again = httpx.get(f"{gw.url}/status/200", headers=h)
        assert again.status_code in (401, 409), again.text
    assert len(upstream.records()) == 1
    assert "could not settle a token use" in gw.output


# ---------------------------------------------------------------- 4. what the body means

def test_request_binding_covers_content_type_encoding_and_method_overrides(
        gateway: GatewayProcess, upstream: Upstream) -> None:
    device = enrol(gateway, "victor")
    token, _ = _token(gateway, "victor", device, "POST", "/accounts/8/transfers", {"amount": 4})
    body = b'{"amount":4}'
    h = {**basic("victor"), "X-Stepgate-Token": token}
    upstream.clear()
    for extra in ({"Content-Type": "application/x-www-form-urlencoded"},
                  {"Content-Type": "text/plain"},
                  {"Content-Type": "application/json", "Content-Encoding": "identity"}):
        r = httpx.post(f"{gateway.url}/accounts/8/transfers", content=body, headers={**h, **extra})
        assert r.status_code == 401, extra
        assert r.json()["detail"] == "token is bound to another request"
    # A compressed body on a request-bound route is refused before any token check.
    gz = httpx.post(f"{gateway.url}/accounts/8/transfers", content=body, headers={
        **h, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert gz.status_code == 415
    for override in ("X-HTTP-Method-Override", "X_HTTP_Method_Override", "X-Method-Override",
                     "x-http-method"):
        r = httpx.post(f"{gateway.url}/accounts/8/transfers", content=body,
                       headers={**h, "Content-Type": "application/json", override: "DELETE"})
        assert r.status_code == 400, override
        assert r.json()["type"] == "urn:stepgate:problem:method-override"
    assert upstream.records() == []
    ok = httpx.post(f"{gateway.url}/accounts/8/transfers", content=body,
                    headers={**h, "Content-Type": "application/json"})
    assert ok.status_code == 200
    assert len(upstream.records()) == 1


# ---------------------------------------------------------------- 5. a store that stalls

def test_a_locked_store_closes_protected_routes_fast_and_leaves_allowed_routes_alone(
        make_gateway: Any, upstream: Upstream) -> None:
    gw = make_gateway(store_timeout="1500ms")
    device = enrol(gw, "walter")
    token, _ = _token(gw, "walter", device, "POST", "/accounts/3/transfers", {"amount": 1})
    upstream.clear()
    lock = sqlite3.connect(db_path(gw), timeout=5)
    lock.execute("BEGIN IMMEDIATE")
    answers: list[httpx.Response] = []
    protected = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{gw.url}/accounts/3/transfers", json={"amount": 1},
        headers={**basic("walter"), "X-Stepgate-Token": token}, timeout=10)))
    try:
        protected.start()
        time.sleep(0.3)  # the protected request now waits for the store
        public = httpx.get(f"{gw.url}/public/x", timeout=10)
        assert public.status_code == 200
        # The allowed route answered while the protected request was still waiting: the
        # store's wait happens off the event loop.
        assert protected.is_alive()
        protected.join(10)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert answers[0].status_code == 503
    assert answers[0].json()["type"] == "urn:stepgate:problem:store-unavailable"
    assert [r["target"] for r in upstream.records()] == ["/public/x"]
    # Once the store answers again, the token (never reserved) still works.
    ok = httpx.post(f"{gw.url}/accounts/3/transfers", json={"amount": 1},
                    headers={**basic("walter"), "X-Stepgate-Token": token})
    assert ok.status_code == 200


# ---------------------------------------------------------------- 6. bounded pool wait

def test_an_exhausted_upstream_pool_answers_503_instead_of_hanging(
        make_gateway: Any, upstream: Upstream) -> None:
    gw = make_gateway(upstream={"url": upstream.url, "connect_timeout": "1s",
                                "read_timeout": "5s", "pool_size": 2, "pool_timeout": "300ms"})
    answers: list[int] = []
    slow = [threading.Thread(target=lambda: answers.append(
        httpx.get(f"{gw.url}/public/slow?sleep=2", timeout=10).status_code)) for _ in range(2)]
    for t in slow:
        t.start()
    time.sleep(0.5)
    busy = httpx.get(f"{gw.url}/public/other", timeout=10)
    assert busy.status_code == 503
    assert busy.json()["type"] == "urn:stepgate:problem:upstream-busy"
    assert busy.headers["retry-after"] == "1"
    for t in slow:
        t.join(10)
    assert answers == [200, 200]
    assert httpx.get(f"{gw.url}/public/other").status_code == 200


# ---------------------------------------------------------------- 8. cross-site posts

def test_credential_changes_need_a_json_content_type(gateway: GatewayProcess) -> None:
    h = basic("peggy")
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "text/plain", None):
        headers = {**h, **({"Content-Type": ctype} if ctype else {})}
        for path in ("/recovery-codes", "/factors/totp", "/challenges"):
            r = httpx.post(f"{gateway.url}{P}{path}", content=b"", headers=headers)
            assert r.status_code == 415, (ctype, path)
            assert r.json()["type"] == "urn:stepgate:problem:unsupported-media-type"
    listed = httpx.get(f"{gateway.url}{P}/factors", headers=h).json()["factors"]
    assert listed == []  # nothing was created by the form posts
    empty_json = httpx.post(f"{gateway.url}{P}/recovery-codes", content=b"",
                            headers={**h, "Content-Type": "application/json"})
    assert empty_json.status_code == 201


# ---------------------------------------------------------------- 9. revocation

def test_admin_reset_and_unlock_revoke_outstanding_tokens(make_gateway: Any,
                                                         upstream: Upstream) -> None:
    gw = make_gateway(env={"STEPGATE_ADMIN_KEY": ADMIN_KEY},
                      admin={"key_env": "STEPGATE_ADMIN_KEY"})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    headers = {}
    for user in ("alice", "bob"):
        device = enrol(gw, user)
        session, info = _token(gw, user, device, "GET", "/settings/a")
        assert info["binding"] == "session"
        headers[user] = {**basic(user), "X-Stepgate-Token": session}
        assert httpx.get(f"{gw.url}/settings/a", headers=headers[user]).status_code == 200
    upstream.clear()
    unlock = httpx.post(f"{gw.url}{P}/admin/users/alice/unlock", json={}, headers=admin)
    assert unlock.status_code == 200
    revoked = httpx.get(f"{gw.url}/settings/a", headers=headers["alice"])
    assert revoked.status_code == 401 and revoked.json()["detail"] == "token was revoked"
    reset = httpx.delete(f"{gw.url}{P}/admin/users/bob/factors", headers=admin)
    assert reset.status_code == 200
    after = httpx.get(f"{gw.url}/settings/b", headers=headers["bob"])
    assert after.status_code == 401 and after.json()["detail"] == "token was revoked"
    assert upstream.records() == []


# ---------------------------------------------------------------- 10. a lost store

def test_a_lost_store_refuses_to_start_and_a_new_store_refuses_old_tokens(
        make_gateway: Any, upstream: Upstream) -> None:
    gw = make_gateway()
    device = enrol(gw, "heidi")
    session, _ = _token(gw, "heidi", device, "GET", "/settings/a")
    h = {**basic("heidi"), "X-Stepgate-Token": session}
    assert httpx.get(f"{gw.url}/settings/a", headers=h).status_code == 200
    gw.stop()
    state = db_path(gw).parent
    for f in state.glob("stepgate.db*"):
        if not f.name.endswith(".instance"):
            f.unlink()
    with pytest.raises(RuntimeError) as err:
        gw.start()
    assert "stepgate store init" in str(err.value)
    env = {"STEPGATE_KEYS": SIGNING, "STEPGATE_DATA_KEYS": DATA, "PATH": "/usr/bin:/bin"}
    init = subprocess.run([sys.executable, "-m", "gateway", "store", "init", "--config",
                           str(gw.config)], capture_output=True, text=True, env=env)
    assert init.returncode == 0, init.stderr
    again = subprocess.run([sys.executable, "-m", "gateway", "store", "init", "--config",
                            str(gw.config)], capture_output=True, text=True, env=env)
    assert again.returncode == 1 and "already exists" in again.stderr
    gw.start()
    upstream.clear()
    old = httpx.get(f"{gw.url}/settings/a", headers=h)
    assert old.status_code in (401, 403)  # the old store's token is refused
    assert upstream.records() == []
    shutil.rmtree(state)  # the whole folder gone, marker included: a first start again
    gw.stop()
    gw.start()
    assert httpx.get(f"{gw.url}/public/x").status_code == 200
