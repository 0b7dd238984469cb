"""Forward-auth end to end: real nginx (auth_request) and real Caddy (forward_auth)
processes, run with the configurations docs/forward-auth.md prints, in front of a real
gateway process and the recording upstream, driven over sockets.

What must hold through each ingress: allowed is forwarded, denied never is, a protected
route without a token gets the challenge, the whole handshake through the ingress forwards
the request once with the evidence, a client's own evidence headers never reach the
upstream, and no path trick reaches a denied or protected path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.client import StepgateAuth

from ..conftest import PASSWORD, GatewayProcess, Upstream, basic
from ..rawhttp import get, request
from ..servers import CaddyIngress, NginxIngress, _Server
from .test_client import enrol_totp as enrol
from .test_proxy import PATH_TABLE

pytestmark = pytest.mark.e2e
P = "/.stepgate"
SECRET = "ingress-secret-for-the-tests-0123456789"
EVIDENCE = ("x-stepgate-user", "x-stepgate-rule", "x-stepgate-factor", "x-stepgate-verified-at")


@pytest.fixture(scope="module")
def gw(make_gateway: Any) -> GatewayProcess:
    return make_gateway(env={"STEPGATE_FORWARD_SECRET": SECRET},
                        forward_auth={"trusted_proxies": ["127.0.0.1/32"],
                                      "secret_env": "STEPGATE_FORWARD_SECRET"})


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def ingress(request: pytest.FixtureRequest, gw: GatewayProcess,
            upstream: Upstream) -> Iterator[_Server]:
    kind = NginxIngress if request.param == "nginx" else CaddyIngress
    server = kind(gw.port, upstream.port, SECRET)
    yield server
    server.stop()


def url(ingress: _Server) -> str:
    return f"http://127.0.0.1:{ingress.port}"


def headers_of(record: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in record["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_allowed_is_forwarded_with_the_target_unchanged(ingress: _Server,
                                                       upstream: Upstream) -> None:
    upstream.clear()
    r = httpx.get(url(ingress) + "/public/a?x=1&y=%2F")
    assert r.status_code == 200
    [rec] = upstream.records()
    assert rec["target"] == "/public/a?x=1&y=%2F"
    h = headers_of(rec)
    # Allowed routes carry no evidence: the ingress sends empty or no headers.
    assert all(h.get(name, [""]) == [""] for name in EVIDENCE)
    assert "x-stepgate-auth-secret" not in h


def test_a_body_passes_through_intact(ingress: _Server, upstream: Upstream) -> None:
    upstream.clear()
    body = b'{"amount": 5}' * 1000
    r = httpx.post(url(ingress) + "/public/upload", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    [rec] = upstream.records()
    assert rec["method"] == "POST" and rec["body_len"] == len(body)


def test_a_rule_that_reads_the_body_is_refused_where_the_body_is_not_sent(
        ingress: _Server, upstream: Upstream) -> None:
    """'big-payments' matches on $.amount; nginx and Caddy never send the body."""
    upstream.clear()
    r = httpx.post(url(ingress) + "/payments", json={"amount": 5}, headers=basic("alice"))
    assert r.status_code == 403
    assert upstream.records() == []


def test_denied_is_never_forwarded(ingress: _Server, upstream: Upstream) -> None:
    upstream.clear()
    for target in ("/admin/x", "/admin", "/%61dmin/x"):
        assert httpx.get(url(ingress) + target, headers=basic("alice")).status_code == 403
    assert upstream.records() == []


def test_protected_without_token_gets_the_challenge_through_the_ingress(
        ingress: _Server, gw: GatewayProcess, upstream: Upstream) -> None:
    user = "heidi" if isinstance(ingress, NginxIngress) else "grace"
    enrol(gw, user)
    upstream.clear()
    r = httpx.get(url(ingress) + "/settings/profile", headers=basic(user))
    assert r.status_code == 401
    first = r.headers.get_list("www-authenticate")[0]
    assert first.startswith('SecondFactor realm="test-api", rule="settings"')
    assert 'ticket="' in first and 'binding="session"' in first
    assert upstream.records() == []


def test_full_handshake_through_the_ingress_forwards_once_with_evidence(
        ingress: _Server, gw: GatewayProcess, upstream: Upstream) -> None:
    user = "ivan" if isinstance(ingress, NginxIngress) else "judy"
    device = enrol(gw, user)
    upstream.clear()
    auth = StepgateAuth(lambda factor, info: device.code(), basic=(user, PASSWORD))
    with httpx.Client(base_url=url(ingress), auth=auth) as c:
        r = c.post("/accounts/7/transfers?to=bob", json={"amount": 10})
        again = c.get("/settings/profile")
        more = c.get("/settings/other")
    assert r.status_code == 200, r.text
    assert [h.status_code for h in r.history] == [401, 201, 200]
    assert again.status_code == 200 and more.status_code == 200
    records = upstream.records()
    assert [x["target"] for x in records] == ["/accounts/7/transfers?to=bob",
                                              "/settings/profile", "/settings/other"]
    first = headers_of(records[0])
    assert first["x-stepgate-user"] == [user] and first["x-stepgate-rule"] == ["transfers"]
    assert first["x-stepgate-factor"] == ["totp"]
    assert first["x-stepgate-verified-at"][0].endswith("Z")
    assert records[0]["body"] == '{"amount":10}'
    assert all("x-stepgate-token" not in headers_of(x) for x in records)
    # enrolment, then one code per rule: the session token was kept for the second path
    assert len(device.issued) == 3


def test_a_request_token_is_spent_at_decision_time(ingress: _Server, gw: GatewayProcess,
                                                   upstream: Upstream) -> None:
    user = "mallory" if isinstance(ingress, NginxIngress) else "niaj"
    device = enrol(gw, user)
    target = url(ingress) + "/accounts/1/transfers"
    first = httpx.post(target, headers=basic(user), json={"amount": 1})
    params = dict(p.split("=", 1) for p in
                  first.headers.get_list("www-authenticate")[0][len("SecondFactor "):]
                  .replace('"', "").split(", "))
    with httpx.Client(base_url=url(ingress), headers=basic(user)) as c:
        ch = c.post(params["challenge_uri"], json={"ticket": params["ticket"]}).json()
        token = c.post(ch["verify_uri"], json={"code": device.code()}).json()["token"]
    upstream.clear()
    h = {**basic(user), "X-Stepgate-Token": token}
    assert httpx.post(target, headers=h, json={"amount": 1}).status_code == 200
    assert httpx.post(target, headers=h, json={"amount": 1}).status_code == 401
    assert len(upstream.records()) == 1


def test_a_clients_evidence_headers_never_reach_the_upstream(ingress: _Server,
                                                             upstream: Upstream) -> None:
    upstream.clear()
    spoof = {"X-Stepgate-User": "root", "X-Stepgate-Rule": "admin",
             "X-Stepgate-Factor": "totp", "X-Stepgate-Verified-At": "2030-01-01T00:00:00Z"}
    r = httpx.get(url(ingress) + "/public/x", headers=spoof)
    assert r.status_code == 200
    head = (b"GET /public/y HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"X_Stepgate_User: root\r\nx_stepgate_rule: admin\r\n\r\n")
    underscored = request(ingress.port, head)
    # nginx drops '_' names; Caddy passes them on, and the gateway refuses them (400).
    assert underscored.status in (200, 400)
    for rec in upstream.records():
        values = [v for k, v in rec["headers"]
                  if k.lower().replace("_", "-") in EVIDENCE]
        assert all(v == "" for v in values), rec["headers"]
    # The ingress's own configuration strips every '_'-spelled X_Stepgate_* name too (nginx
    # drops '_' names; Caddy's header_up -X_Stepgate_*), not only the ones the gateway
    # knows and refuses.
    upstream.clear()
    other = request(ingress.port, b"GET /public/z HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Connection: close\r\nX_Stepgate_Extra: 1\r\nx_stepgate_more: 2\r\n\r\n")
    assert other.status == 200
    [rec] = upstream.records()
    assert not [k for k, _ in rec["headers"] if k.lower().startswith("x_stepgate")]


@pytest.mark.parametrize("target,status,received", PATH_TABLE)
def test_no_path_trick_reaches_a_denied_or_protected_path(
        ingress: _Server, upstream: Upstream, target: str, status: int,
        received: str | None) -> None:
    upstream.clear()
    resp = get(ingress.port, target)
    records = upstream.records()
    if received is None:
        # Refused by the gateway (400 or 403; nginx shows any auth status but 401/403 as
        # 500) or by the ingress itself; never forwarded.
        assert resp.status in (400, 403, 404, 500), (target, resp.status)
        assert records == [], target
    else:
        assert resp.status == 200, (target, resp.status)
        assert [r["target"] for r in records] == [received]


def test_clients_cannot_ask_the_decision_endpoints(ingress: _Server,
                                                   upstream: Upstream) -> None:
    for target in (f"{P}/auth/nginx", f"{P}/auth/caddy", f"{P}/auth/envoy/public/x",
                   f"{P}/auth/../auth/nginx"):
        r = get(ingress.port, target, {"X-Original-URI": "/admin/x", "X-Original-Method": "GET"})
        assert r.status == 404, target
    # The gateway's own endpoints are reachable through the ingress for the handshake.
    assert httpx.get(url(ingress) + f"{P}/config").status_code == 200
