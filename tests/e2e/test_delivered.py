"""Delivered codes over real channels (a command, a webhook receiver, an SMTP server),
self-service with step-up, notifications, combined factors and the admin API, end to end."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.client import StepgateAuth

from ..conftest import HERE, PASSWORD, GatewayProcess, Upstream, basic
from ..totp_ref import Device
from .mailbox import Mailbox as Received
from .mailbox import serving

pytestmark = pytest.mark.e2e
P = "/.stepgate"
ADMIN_KEY = "admin-key-for-tests-0123456789"
CODE = re.compile(r"code is (\d{6,8})")


class Mailbox(Received):
    def code(self, to: str, count: int) -> str:
        m = CODE.search(self.wait(to, count)[count - 1].replace("=\n", ""))
        assert m is not None
        return m.group(1)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    with serving(Mailbox()) as box:
        yield box


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outbox") / "sent.jsonl"


def sent(outbox: Path, address: str) -> list[dict[str, Any]]:
    if not outbox.exists():
        return []
    return [d for d in map(json.loads, outbox.read_text().splitlines()) if d["address"] == address]


def sms_code(outbox: Path, address: str, index: int = -1) -> str:
    m = CODE.search(sent(outbox, address)[index]["message"])
    assert m is not None
    return m.group(1)


RULES = {"rules": [
    {"name": "sms-only", "match": {"paths": ["/sms/**"]},
     "require": {"factors": ["sms"], "binding": "route"}},
    {"name": "pager", "match": {"paths": ["/pager/**"]},
     "require": {"factors": ["pager"], "binding": "route"}},
    {"name": "both", "match": {"paths": ["/both/**"]},
     "require": {"factors": {"all_of": ["totp", "email"]}, "binding": "route"}},
    {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"},
]}


@pytest.fixture(scope="module")
def gw(make_gateway: Any, upstream: Upstream, mailbox: Mailbox, outbox: Path) -> GatewayProcess:
    sender = [sys.executable, str(HERE / "send_code.py"), str(outbox)]
    return make_gateway(
        rules=RULES, env={"STEPGATE_ADMIN_KEY": ADMIN_KEY},
        factors={
            "totp": {"issuer": "Test Bank"},
            "sms": {"deliver": {"command": sender, "timeout": "5s"}},
            "email": {"deliver": {"smtp": {"host": "127.0.0.1", "port": mailbox.port,  # type: ignore[attr-defined]
                                           "sender": "2fa@test.example"}}},
            "pager": {"deliver": {"webhook": {"url": f"{upstream.url}/hook"}}, "digits": 8},
            "broken": {"deliver": {"command": [*sender, "3"]}},
            "hookfail": {"deliver": {"webhook": {"url": f"{upstream.url}/hook/fail"}}},
        },
        notify={"channel": "email"},
        throttle={"resend_after": "2s"},
        admin={"key_env": "STEPGATE_ADMIN_KEY"},
    )


def enrol_sms(c: httpx.Client, outbox: Path, phone: str) -> None:
    r = c.post(f"{P}/factors/sms", json={"address": phone}).json()
    assert c.post(r["confirm_uri"], json={"code": sms_code(outbox, phone)}).status_code == 200


def client(gw: GatewayProcess, user: str, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers=basic(user), timeout=20, **kw)


def test_config_lists_every_factor(gw: GatewayProcess) -> None:
    doc = httpx.get(f"{gw.url}{P}/config").json()
    assert doc["factors"][:2] == ["totp", "recovery"]
    assert sorted(doc["factors"][2:]) == ["broken", "email", "hookfail", "pager", "sms"]


def test_command_channel_enrol_and_codes_bound_to_their_challenge(gw: GatewayProcess,
                                                                  outbox: Path) -> None:
    phone = "+33612345678"
    with client(gw, "alice") as c:
        r = c.post(f"{P}/factors/sms", json={"address": phone})
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "pending"
        assert phone not in r.text and r.json()["label"].endswith("78")
        (msg,) = sent(outbox, phone)
        assert msg["channel"] == "sms" and phone not in msg["argv"]
        assert c.post(r.json()["confirm_uri"], json={"code": "000000"}).status_code == 403
        ok = c.post(r.json()["confirm_uri"], json={"code": sms_code(outbox, phone)})
        assert ok.status_code == 200 and ok.json()["status"] == "active"
        tickets = [c.get(f"/sms/{i}").json()["ticket"] for i in range(2)]
        a = c.post(f"{P}/challenges", json={"ticket": tickets[0]}).json()
        code_a = sms_code(outbox, phone)
        b = c.post(f"{P}/challenges", json={"ticket": tickets[1]}).json()
        code_b = sms_code(outbox, phone)
        assert a["factor"] == "sms" and a["resend_after"] == 2 and "Code sent to" in a["hint"]
        if code_a != code_b:  # equal by chance one time in a million
            assert c.post(b["verify_uri"], json={"code": code_a}).status_code == 403
        v = c.post(b["verify_uri"], json={"code": code_b})
        assert v.status_code == 200
        sms, _codes = c.get(f"{P}/factors").json()["factors"]  # codes came with the first
        assert sms["type"] == "sms" and sms["last_used_at"] is not None
        assert c.get("/sms/1", headers={"X-Stepgate-Token": v.json()["token"]}).status_code == 200
        assert c.post(b["verify_uri"], json={"code": code_b}).status_code == 410  # single use
        # a fourth challenge code within ten minutes is refused (the enrolment's code is
        # counted apart: enrolment_sends_per_window)
        t = c.get("/sms/2").json()["ticket"]
        assert c.post(f"{P}/challenges", json={"ticket": t}).status_code == 201
        t = c.get("/sms/3").json()["ticket"]
        limited = c.post(f"{P}/challenges", json={"ticket": t})
        assert limited.status_code == 429
        assert limited.json()["type"] == "urn:stepgate:problem:too-many-sends"
        assert int(limited.headers["retry-after"]) <= 600


def test_resend_waits_then_voids_the_old_code(gw: GatewayProcess, outbox: Path) -> None:
    phone = "+4915112345678"
    with client(gw, "bob") as c:
        enrol_sms(c, outbox, phone)
        ticket = c.get("/sms/x").json()["ticket"]
        first = c.post(f"{P}/challenges", json={"ticket": ticket}).json()
        old = sms_code(outbox, phone)
        soon = c.post(f"{P}/challenges", json={"ticket": ticket})
        assert soon.status_code == 429 and soon.json()["type"] == "urn:stepgate:problem:resend-too-soon"
        assert 1 <= int(soon.headers["retry-after"]) <= 2
        time.sleep(2.1)
        second = c.post(f"{P}/challenges", json={"ticket": ticket})
        assert second.status_code == 201
        new = sms_code(outbox, phone)
        assert len(sent(outbox, phone)) == 3
        gone = c.post(first["verify_uri"], json={"code": old})
        assert gone.status_code == 410
        assert c.post(second.json()["verify_uri"], json={"code": new}).status_code == 200


def test_failed_delivery_consumes_nothing(gw: GatewayProcess, outbox: Path) -> None:
    with client(gw, "carol") as c:
        for channel in ("broken", "broken", "hookfail", "broken"):
            r = c.post(f"{P}/factors/{channel}", json={"address": "carol-device"})
            assert r.status_code == 502, r.text
            assert r.json()["type"] == "urn:stepgate:problem:delivery-failed"
            assert "carol-device" not in r.text
        assert c.get(f"{P}/factors").json()["factors"] == []
        for phone in ("+3311111111", "+3322222222", "+3333333333"):  # all three sends left
            assert c.post(f"{P}/factors/sms", json={"address": phone}).status_code == 201


def test_webhook_channel(gw: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    with client(gw, "dave") as c:
        r = c.post(f"{P}/factors/pager", json={"address": "dave-pager-7"}).json()
        (hook,) = [rec for rec in upstream.records() if rec["target"] == "/hook"]
        doc = json.loads(hook["body"])
        assert doc["channel"] == "pager" and doc["address"] == "dave-pager-7"
        code = CODE.search(doc["message"]).group(1)  # type: ignore[union-attr]
        assert len(code) == 8
        assert c.post(r["confirm_uri"], json={"code": code}).status_code == 200


def test_email_step_up_notifications_and_all_of(gw: GatewayProcess, mailbox: Mailbox,
                                                upstream: Upstream) -> None:
    me = "erin@example.org"
    with client(gw, "erin") as c:
        r = c.post(f"{P}/factors/email", json={"address": me}).json()
        assert c.post(r["confirm_uri"], json={"code": mailbox.code(me, 1)}).status_code == 200
        assert "was added" in mailbox.wait(me, 2)[1]  # told out of band
        # erin now has a factor: adding TOTP needs a manage token, answered by e-mail
        assert c.post(f"{P}/factors/totp", json={}).status_code == 401
    sends = {"n": 2}

    def by_mail(factor: str, info: dict[str, Any]) -> str:
        assert factor == "email"
        sends["n"] += 1
        return mailbox.code(me, sends["n"])
    with httpx.Client(base_url=gw.url, timeout=20,
                      auth=StepgateAuth(by_mail, basic=("erin", PASSWORD), factor="email")) as c:
        t = c.post(f"{P}/factors/totp", json={"label": "phone"})
        assert t.status_code == 201, t.text
    device = Device(t.json()["secret"])
    with client(gw, "erin") as c:
        assert c.post(t.json()["confirm_uri"], json={"code": device.code()}).status_code == 200
        notices = mailbox.wait(me, sends["n"] + 1)
        assert "(totp, phone) was added" in notices[-1]
        # one factor of an all_of pair is not enough
        ticket = c.get("/both/x").json()["ticket"]
        ch = c.post(f"{P}/challenges", json={"ticket": ticket, "factor": "totp"}).json()
        half = c.post(ch["verify_uri"], json={"code": device.code()})
        assert half.status_code == 200 and "token" not in half.json()
        assert half.json()["remaining"] == ["email"]
        assert c.get("/both/x").status_code == 401
        ch2 = c.post(f"{P}/challenges", json={"ticket": ticket}).json()
        assert ch2["factor"] == "email"
        whole = c.post(ch2["verify_uri"], json={"code": mailbox.code(me, sends["n"] + 2)})
        token = whole.json()["token"]
        upstream.clear()
        ok = c.get("/both/x", headers={"X-Stepgate-Token": token})
        assert ok.status_code == 200
        h = {k.lower(): v for k, v in upstream.records()[0]["headers"]}
        assert h["x-stepgate-factor"] == "totp+email"


def admin(gw: GatewayProcess, method: str, path: str, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{P}/admin{path}",
                         headers={"Authorization": f"Bearer {key}"},
                         json={} if method == "POST" else None)


def test_admin_api(gw: GatewayProcess, outbox: Path, gateway: GatewayProcess) -> None:
    phone = "+3344444444"
    with client(gw, "frank") as c:
        enrol_sms(c, outbox, phone)
        ticket = c.get("/sms/y").json()["ticket"]
        ch = c.post(f"{P}/challenges", json={"ticket": ticket}).json()
        for _ in range(4):
            c.post(ch["verify_uri"], json={"code": "999999"})
    listed = admin(gw, "GET", "/users/frank/factors")
    assert listed.status_code == 200
    doc = listed.json()
    assert [f["type"] for f in doc["factors"]] == ["sms"] and doc["failures"] == 4
    assert phone not in listed.text
    assert admin(gw, "POST", "/users/frank/unlock").json() == {"user": "frank", "locked": False}
    assert admin(gw, "GET", "/users/frank/factors").json()["failures"] == 0
    events = admin(gw, "GET", "/audit?user=frank").json()["events"]
    kinds = [e["event"] for e in events]
    assert "factor_confirmed" in kinds and "failed" in kinds and "admin_unlocked" in kinds
    assert all(e["user"] == "frank" for e in events)
    assert admin(gw, "GET", f"/audit?user=frank&since={time.time() + 60}").json()["events"] == []
    assert admin(gw, "DELETE", "/users/frank/factors").json()["removed"] >= 1
    assert admin(gw, "GET", "/users/frank/factors").json()["factors"] == []
    assert admin(gw, "GET", "/users/frank/factors", key="wrong" * 6).status_code == 401
    assert httpx.get(f"{gw.url}{P}/admin/audit").status_code == 401
    assert admin(gw, "GET", "/audit?since=yesterday").status_code == 400
    # no key configured: the admin API does not exist
    assert admin(gateway, "GET", "/audit").status_code == 404


BAD = [
    ("POST", "/factors/fax", {"json": {"address": "x"}}, 404, "unknown-factor"),
    ("POST", "/factors/sms", {"json": {"address": "0612345678"}}, 400, "invalid-address"),
    ("POST", "/factors/sms", {"json": {"address": "+33 6 12"}}, 400, "invalid-address"),
    ("POST", "/factors/email", {"json": {"address": "not-an-email"}}, 400, "invalid-address"),
    ("POST", "/factors/email", {"json": {"address": "a@b.c\r\nBcc: x@y.z"}}, 400, "invalid-address"),
    ("POST", "/factors/sms", {"json": {}}, 400, "invalid-body"),
    ("POST", "/factors/sms", {"json": {"address": 33612345678}}, 400, "invalid-body"),
    ("POST", "/factors/sms", {"json": {"address": "+33" + "1" * 300}}, 400, "invalid-body"),
    ("POST", "/factors/sms", {"content": b"x" * 20000,
                              "headers": {"content-type": "application/json"}}, 413, "body-too-large"),
    ("POST", "/factors/sms", {"content": b'{"address": "+33612345678"}',
                              "headers": {"content-type": "text/plain"}}, 415, "unsupported-media-type"),
    ("POST", "/factors/sms", {"content": b'{"address": ',
                              "headers": {"content-type": "application/json"}}, 400, "invalid-body"),
    ("POST", "/factors/f_nope/confirm", {"json": {}}, 400, "invalid-body"),
    ("PUT", "/factors/sms", {"json": {}}, 405, "method-not-allowed"),
    ("POST", "/challenges", {"json": {"ticket": "x", "factor": 5}}, 400, "invalid-body"),
]


@pytest.mark.parametrize("method,path,kw,status,name", BAD)
def test_bad_input_answers_a_problem(gw: GatewayProcess, upstream: Upstream, method: str,
                                     path: str, kw: dict[str, Any], status: int, name: str) -> None:
    upstream.clear()
    kw = dict(kw)
    headers = {**basic("grace"), **kw.pop("headers", {})}
    r = httpx.request(method, f"{gw.url}{P}{path}", headers=headers, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:stepgate:problem:{name}"
    assert upstream.records() == []
