"""The 401 handshake end to end: real gateway and upstream processes, a real client."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest

from gateway.client import SecondFactorError, StepgateAuth

from ..conftest import PASSWORD, GatewayProcess, Upstream, basic
from ..totp_ref import Device

pytestmark = pytest.mark.e2e
P = "/.stepgate"


def enrol(gw: GatewayProcess, user: str, device_holder: dict[str, Any] | None = None,
          auth: httpx.Auth | None = None) -> Device:
    with httpx.Client(base_url=gw.url, headers=basic(user), auth=auth) as c:
        r = c.post(f"{P}/factors/totp", json={"label": "phone"})
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["status"] == "pending"
        assert doc["otpauth_uri"].startswith("otpauth://totp/Test%20Bank:" + user)
        assert "issuer=Test%20Bank" in doc["otpauth_uri"]
        ET.fromstring(doc["qr_svg"])  # well-formed SVG
        device = Device(doc["secret"])
        wrong = c.post(f"{P}/factors/{doc['id']}/confirm", json={"code": "000000"})
        assert wrong.status_code == 403
        ok = c.post(f"{P}/factors/{doc['id']}/confirm", json={"code": device.code()})
        assert ok.status_code == 200 and ok.json()["status"] == "active"
        assert len(ok.json()["recovery_codes"]) == 10  # the first factor brings them
        listed = c.get(f"{P}/factors").json()["factors"]
        assert [(f["type"], f["status"]) for f in listed] == [("totp", "active"),
                                                              ("recovery", "active")]
    return device


def codes_from(device: Device):
    return lambda factor, info: device.code()


def test_totp_handshake_forwards_once_with_evidence(gateway: GatewayProcess,
                                                   upstream: Upstream) -> None:
    device = enrol(gateway, "alice")
    upstream.clear()
    auth = StepgateAuth(codes_from(device), basic=("alice", PASSWORD))
    r = httpx.post(f"{gateway.url}/accounts/7/transfers", json={"amount": 10}, auth=auth)
    assert r.status_code == 200, r.text
    (rec,) = upstream.records()
    h = {k.lower(): v for k, v in rec["headers"]}
    assert h["x-stepgate-user"] == "alice"
    assert h["x-stepgate-rule"] == "transfers"
    assert h["x-stepgate-factor"] == "totp"
    assert h["x-stepgate-verified-at"].endswith("Z")
    assert "x-stepgate-token" not in h
    assert h["authorization"].startswith("Basic ")  # the legacy first factor passes through
    assert rec["body_len"] == len(b'{"amount":10}')


def test_no_identity_gets_both_challenges(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    r = httpx.post(f"{gateway.url}/accounts/1/transfers", json={})
    assert r.status_code == 401
    challenges = r.headers.get_list("www-authenticate")
    assert challenges[0].startswith('Basic realm="test-api"')
    assert challenges[1].startswith('SecondFactor realm="test-api", rule="transfers", '
                                    'factors="totp recovery", challenge_uri="/.stepgate/challenges", ticket="')
    body = r.json()
    assert body["type"] == "urn:stepgate:problem:second-factor-required"
    assert body["binding"] == "request" and body["token_header"] == "X-Stepgate-Token"
    assert r.headers["cache-control"] == "no-store"
    wrong_pw = httpx.post(f"{gateway.url}/accounts/1/transfers", json={},
                          headers=basic("alice", "nope"))
    assert wrong_pw.status_code == 401
    assert upstream.records() == []


def _token(gw: GatewayProcess, user: str, device: Device | None, method: str, path: str,
           body: Any = None, recovery: str | None = None) -> tuple[str, dict[str, Any]]:
    with httpx.Client(base_url=gw.url, headers=basic(user)) as c:
        r = c.request(method, path, json=body)
        assert r.status_code == 401, r.text
        ticket = r.json()["ticket"]
        factor = "recovery" if recovery else "totp"
        ch = c.post(f"{P}/challenges", json={"ticket": ticket, "factor": factor})
        assert ch.status_code == 201, ch.text
        assert ch.headers["cache-control"] == "no-store"
        code = recovery or device.code()  # type: ignore[union-attr]
        v = c.post(ch.json()["verify_uri"], json={"code": code})
        assert v.status_code == 200, v.text
        return v.json()["token"], v.json()


def test_single_use_token_replayed_in_parallel_reaches_upstream_once(
        gateway: GatewayProcess, upstream: Upstream) -> None:
    device = enrol(gateway, "bob")
    token, info = _token(gateway, "bob", device, "POST", "/accounts/2/transfers", {"amount": 3})
    assert info["uses"] == 1 and info["binding"] == "request"
    upstream.clear()
    results: list[int] = []
    barrier = threading.Barrier(20)

    def fire() -> None:
        barrier.wait()
        r = httpx.post(f"{gateway.url}/accounts/2/transfers", json={"amount": 3},
                       headers={**basic("bob"), "X-Stepgate-Token": token}, timeout=30)
        results.append(r.status_code)
    threads = [threading.Thread(target=fire) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 1, results
    assert set(results) <= {200, 401, 409}
    assert len(upstream.records()) == 1


def tampered(value: str) -> str:
    c = "A" if value[-10] != "A" else "B"
    return value[:-10] + c + value[-9:]


def test_token_is_bound_to_the_request_and_user(gateway: GatewayProcess,
                                                upstream: Upstream) -> None:
    device = enrol(gateway, "carol")
    token, _ = _token(gateway, "carol", device, "POST", "/accounts/3/transfers", {"amount": 1})
    upstream.clear()
    h = {**basic("carol"), "X-Stepgate-Token": token}
    attempts = [
        ("POST", "/accounts/3/transfers", {"amount": 999}, h),           # another body
        ("POST", "/accounts/4/transfers", {"amount": 1}, h),             # another path
        ("POST", "/accounts/3/transfers?x=1", {"amount": 1}, h),         # another query
        ("POST", "/accounts/3/transfers", {"amount": 1},
         {**basic("dave"), "X-Stepgate-Token": token}),                  # another user
        ("POST", "/accounts/3/transfers", {"amount": 1},
         {**basic("carol"), "X-Stepgate-Token": tampered(token)}),        # tampered
    ]
    for method, path, body, headers in attempts:
        r = httpx.request(method, f"{gateway.url}{path}", json=body, headers=headers)
        assert r.status_code == 401, (path, body)
        assert r.json()["type"] == "urn:stepgate:problem:second-factor-required"
    assert upstream.records() == []
    ok = httpx.post(f"{gateway.url}/accounts/3/transfers", json={"amount": 1}, headers=h)
    assert ok.status_code == 200
    again = httpx.post(f"{gateway.url}/accounts/3/transfers", json={"amount": 1}, headers=h)
    assert again.status_code == 401 and again.json()["detail"] == "token already used"
    assert len(upstream.records()) == 1


def test_recovery_codes_and_step_up_for_management(gateway: GatewayProcess,
                                                   upstream: Upstream) -> None:
    with httpx.Client(base_url=gateway.url, headers=basic("erin")) as c:
        first = c.post(f"{P}/recovery-codes", json={})  # no factor yet: no step-up needed
        assert first.status_code == 201
        codes = first.json()["codes"]
        assert len(codes) == 10 and all(len(x.replace("-", "")) >= 12 for x in codes)
        again = c.post(f"{P}/factors/totp", json={})  # now erin has a factor: step-up required
        assert again.status_code == 401
        assert again.json()["rule"] == "stepgate:manage"
    # The client helper answers the manage challenge with a recovery code.
    auth = StepgateAuth(lambda f, i: codes[0], basic=("erin", PASSWORD), factor="recovery")
    with httpx.Client(base_url=gateway.url, auth=auth) as c:
        r = c.post(f"{P}/factors/totp", json={"label": "tablet"})
        assert r.status_code == 201, r.text
    upstream.clear()
    auth2 = StepgateAuth(lambda f, i: codes[1].lower(), basic=("erin", PASSWORD), factor="recovery")
    r = httpx.post(f"{gateway.url}/accounts/5/transfers", json={"amount": 2}, auth=auth2)
    assert r.status_code == 200
    assert {k.lower(): v for k, v in upstream.records()[0]["headers"]}["x-stepgate-factor"] == "recovery"
    reused = StepgateAuth(lambda f, i: codes[1], basic=("erin", PASSWORD), factor="recovery")
    with pytest.raises(SecondFactorError) as err:
        httpx.post(f"{gateway.url}/accounts/5/transfers", json={"amount": 2}, auth=reused)
    assert err.value.response.status_code == 403
    assert err.value.problem["attempts_left"] == 4


def test_wrong_codes_exhaust_challenge_then_lock_user(gateway: GatewayProcess) -> None:
    enrol(gateway, "frank")
    with httpx.Client(base_url=gateway.url, headers=basic("frank")) as c:
        ticket = c.post("/accounts/1/transfers", json={}).json()["ticket"]
        statuses = []
        for _ in range(2):
            ch = c.post(f"{P}/challenges", json={"ticket": ticket}).json()
            for _ in range(5):
                r = c.post(ch["verify_uri"], json={"code": "123456"})
                statuses.append(r.status_code)
            state = c.get(f"{P}/challenges/{ch['challenge_id']}").json()
        assert statuses[:5] == [403, 403, 403, 403, 410]
        assert statuses[9] == 429  # the tenth consecutive failure locks the user
        assert state["state"] == "failed"
        locked = c.post(f"{P}/challenges", json={"ticket": ticket})
        assert locked.status_code == 429
        assert 290 <= int(locked.headers["retry-after"]) <= 300
        assert locked.json()["type"] == "urn:stepgate:problem:locked"


def test_foreign_or_unknown_challenge_is_404(gateway: GatewayProcess) -> None:
    enrol(gateway, "grace")
    with httpx.Client(base_url=gateway.url, headers=basic("grace")) as c:
        ticket = c.post("/accounts/1/transfers", json={}).json()["ticket"]
        ch = c.post(f"{P}/challenges", json={"ticket": ticket}).json()
    other = httpx.post(f"{gateway.url}{ch['verify_uri']}", json={"code": "123456"},
                       headers=basic("heidi"))
    unknown = httpx.post(f"{gateway.url}{P}/challenges/AAAAAAAAAAAAAAAAAAAAAAAA/verify",
                         json={"code": "123456"}, headers=basic("heidi"))
    assert other.status_code == unknown.status_code == 404
    # the same answer (but for the request's own id): another user's id reveals nothing
    assert {k: v for k, v in other.json().items() if k != "request_id"} == \
        {k: v for k, v in unknown.json().items() if k != "request_id"}
    stolen = httpx.post(f"{gateway.url}{P}/challenges", json={"ticket": ticket},
                        headers=basic("heidi"))
    assert stolen.status_code == 400  # grace's ticket is not heidi's


def test_route_token_is_released_on_upstream_failure(gateway: GatewayProcess,
                                                     upstream: Upstream) -> None:
    device = enrol(gateway, "ivan")
    token, info = _token(gateway, "ivan", device, "GET", "/status/500")
    assert info["binding"] == "route"
    h = {**basic("ivan"), "X-Stepgate-Token": token}
    assert httpx.get(f"{gateway.url}/status/500", headers=h).status_code == 500
    assert httpx.get(f"{gateway.url}/status/503", headers=h).status_code == 503
    assert httpx.get(f"{gateway.url}/status/201", headers=h).status_code == 201
    assert httpx.get(f"{gateway.url}/status/201", headers=h).status_code == 401


def test_session_token_serves_many_requests(gateway: GatewayProcess, upstream: Upstream) -> None:
    device = enrol(gateway, "judy")
    token, info = _token(gateway, "judy", device, "GET", "/settings/a")
    assert info["binding"] == "session" and info["uses"] is None
    upstream.clear()
    h = {**basic("judy"), "X-Stepgate-Token": token}
    for path in ("/settings/a", "/settings/b", "/settings/c"):
        assert httpx.get(f"{gateway.url}{path}", headers=h).status_code == 200
    assert len(upstream.records()) == 3


def test_content_triggered_step_up(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    h = basic("mallory")
    assert httpx.post(f"{gateway.url}/payments", json={"amount": 5}, headers=h).status_code == 200
    for body in ({"amount": 5000}, {"amount": "5000"}, {"amount": "lots"}):
        r = httpx.post(f"{gateway.url}/payments", json=body, headers=h)
        assert r.status_code == 403, body  # mallory has no factor: not enrolled
        assert r.json()["type"] == "urn:stepgate:problem:factor-not-enrolled"
    dup = httpx.post(f"{gateway.url}/payments", content=b'{"amount": 5, "amount": 5000}',
                     headers={**h, "Content-Type": "application/json"})
    assert dup.status_code == 400
    assert len(upstream.records()) == 1


def test_unenrolled_allow_forwards(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    r = httpx.get(f"{gateway.url}/optin/x", headers=basic("niaj"))
    assert r.status_code == 200
    h = {k.lower(): v for k, v in upstream.records()[0]["headers"]}
    assert h["x-stepgate-user"] == "niaj" and h["x-stepgate-factor"] == "none"


def test_enrolment_survives_restart_and_audit_has_no_secrets(make_gateway,
                                                             upstream: Upstream) -> None:
    gw = make_gateway()
    device = enrol(gw, "olivia")
    gw.stop()
    gw.start()
    upstream.clear()
    token, _ = _token(gw, "olivia", device, "POST", "/accounts/9/transfers", {"amount": 1})
    r = httpx.post(f"{gw.url}/accounts/9/transfers", json={"amount": 1},
                   headers={**basic("olivia"), "X-Stepgate-Token": token})
    assert r.status_code == 200
    out = gw.stop()
    lines = [json.loads(line) for line in gw.audit.splitlines()]
    events = [e.pop("event") for e in lines]
    for expected in ("factor_added", "factor_confirmed", "challenged", "challenge_created",
                     "verified", "token_issued", "token_used", "failed"):
        assert expected in events
    for e in lines:
        e.pop("ts")  # timestamps hold digits that could look like a code
    audit = json.dumps(lines)
    for secret in (device.secret, token, PASSWORD, *device.issued):
        assert secret not in audit
        assert secret not in out
    db = (gw.config.parent / "state" / "stepgate.db").read_bytes()
    assert device.secret.encode() not in db
