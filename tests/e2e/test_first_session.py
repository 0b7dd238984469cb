"""A person's first session against a real gateway process, a real upstream and a real SMTP
server, with the default limits: TOTP enrolled from a terminal (text/plain), e-mail and SMS
enrolled, then one all_of request that needs all three — and never a 429 on the way.
Recovery codes come with the first confirmation only; a flood of enrolments still stops;
a reused TOTP code is told apart, in the answer and in the audit."""

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

from ..conftest import HERE, GatewayProcess, Upstream, basic
from ..totp_ref import Device
from .mailbox import Mailbox as Received
from .mailbox import serving

pytestmark = pytest.mark.e2e
P = "/.stepgate"
CODE = re.compile(r"code is (\d{6})")
RULES = {"rules": [
    {"name": "vault", "match": {"paths": ["/vault/**"]},
     "require": {"factors": {"all_of": ["totp", "email", "sms"]}, "binding": "request"}},
    {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
     "require": {"factors": ["totp"], "binding": "request"}},
    {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"},
]}


class Mailbox(Received):
    def code(self, address: str, count: int, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while len(self.to(address)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        mine = self.to(address)
        assert len(mine) == count, (address, len(mine), count)
        m = CODE.search(mine[-1].replace("=\n", ""))
        assert m is not None
        return m.group(1)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    with serving(Mailbox()) as box:
        yield box


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sms") / "sent.jsonl"


def sms_code(outbox: Path, phone: str, count: int) -> str:
    sent = [d for d in map(json.loads, outbox.read_text().splitlines()) if d["address"] == phone]
    assert len(sent) == count, (phone, len(sent), count)
    m = CODE.search(sent[-1]["message"])
    assert m is not None
    return m.group(1)


@pytest.fixture(scope="module")
def gw(make_gateway: Any, upstream: Upstream, mailbox: Mailbox, outbox: Path) -> GatewayProcess:
    # No throttle settings: the defaults are what a first session meets.
    return make_gateway(rules=RULES, factors={
        "totp": {"issuer": "Test Bank"},
        "email": {"deliver": {"smtp": {"host": "127.0.0.1", "port": mailbox.port,  # type: ignore[attr-defined]
                                       "sender": "2fa@test.example"}}},
        "sms": {"deliver": {"command": [sys.executable, str(HERE / "send_code.py"),
                                        str(outbox)]}},
    })


class Session(httpx.Client):
    """A person's client: every answer is kept, to show none was a 429."""

    def __init__(self, gw: GatewayProcess, user: str) -> None:
        self.statuses: list[tuple[str, int]] = []
        super().__init__(base_url=gw.url, headers={**basic(user),
                                                   "Content-Type": "application/json"},
                         timeout=20, event_hooks={"response": [self._keep]})

    def _keep(self, response: httpx.Response) -> None:
        self.statuses.append((response.request.url.path, response.status_code))

    def manage_token(self, path: str, body: dict[str, Any], recovery_code: str) -> str:
        denied = self.post(path, json=body)
        assert denied.status_code == 401 and denied.json()["rule"] == "stepgate:manage"
        ch = self.post(f"{P}/challenges", json={"ticket": denied.json()["ticket"],
                                                "factor": "recovery"}).json()
        token = self.post(ch["verify_uri"], json={"code": recovery_code})
        assert token.status_code == 200, token.text
        return str(token.json()["token"])


def audit_events(gw: GatewayProcess, user: str, event: str, count: int) -> list[dict[str, Any]]:
    """The audit file's lines for ``event`` (lines are flushed once a second)."""
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in map(json.loads, gw.audit.splitlines())
                 if e.get("user") == user and e["event"] == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_first_session_enrols_three_factors_and_answers_all_of_them(
        gw: GatewayProcess, upstream: Upstream, mailbox: Mailbox, outbox: Path) -> None:
    me, phone = "heidi@example.org", "+33612340001"
    with Session(gw, "heidi") as s:
        # 1. TOTP from a terminal: the QR code and the secret as text
        r = s.post(f"{P}/factors/totp", headers={"Accept": "text/plain"})
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
        assert "▀" in r.text and "▄" in r.text
        secret = re.search(r"^Secret:\s+([A-Z2-7]+)$", r.text, re.M).group(1)  # type: ignore[union-attr]
        confirm = re.search(r"(http://\S+/confirm)$", r.text, re.M).group(1)  # type: ignore[union-attr]
        assert confirm.startswith(f"{gw.url}{P}/factors/f_")
        device = Device(secret)
        first = s.post(confirm, json={"code": device.code()})
        assert first.status_code == 200, first.text
        codes = first.json()["recovery_codes"]  # the first factor: codes, once
        assert len(codes) == 10
        # 2. e-mail, a change now: a manage token, answered with a recovery code
        body = {"address": me}
        token = s.manage_token(f"{P}/factors/email", body, codes[0])
        r = s.post(f"{P}/factors/email", json=body, headers={"X-Stepgate-Token": token})
        assert r.status_code == 201, r.text
        second = s.post(r.json()["confirm_uri"], json={"code": mailbox.code(me, 1)})
        assert second.status_code == 200 and "recovery_codes" not in second.json()
        # 3. SMS the same way
        body = {"address": phone}
        token = s.manage_token(f"{P}/factors/sms", body, codes[1])
        r = s.post(f"{P}/factors/sms", json=body, headers={"X-Stepgate-Token": token})
        assert r.status_code == 201, r.text
        third = s.post(r.json()["confirm_uri"], json={"code": sms_code(outbox, phone, 1)})
        assert third.status_code == 200 and "recovery_codes" not in third.json()
        listed = s.get(f"{P}/factors").json()["factors"]
        assert [(f["type"], f["status"]) for f in listed] == [
            ("totp", "active"), ("email", "active"), ("sms", "active"), ("recovery", "active")]
        # 4. one request that needs all three: two more codes sent, four in ten minutes
        upstream.clear()
        ticket = s.get("/vault/1").json()["ticket"]
        answers = {"totp": device.code, "email": lambda: mailbox.code(me, 2),
                   "sms": lambda: sms_code(outbox, phone, 2)}
        for factor in ("totp", "email", "sms"):
            ch = s.post(f"{P}/challenges", json={"ticket": ticket, "factor": factor})
            assert ch.status_code == 201, ch.text
            v = s.post(ch.json()["verify_uri"], json={"code": answers[factor]()})
            assert v.status_code == 200, v.text
        ok = s.get("/vault/1", headers={"X-Stepgate-Token": v.json()["token"]})
        assert ok.status_code == 200
        (seen,) = upstream.records()
        assert dict((k.lower(), v) for k, v in seen["headers"])["x-stepgate-factor"] == \
            "totp+email+sms"
        assert [st for st in s.statuses if st[1] == 429] == []
        # 5. the last TOTP code again: refused as a replay, told apart, nothing spent
        last = device.issued[-1]
        ticket = s.post("/pay", json={"n": 1}).json()["ticket"]
        ch = s.post(f"{P}/challenges", json={"ticket": ticket}).json()
        reused = s.post(ch["verify_uri"], json={"code": last})
        assert reused.status_code == 403
        doc = reused.json()
        assert doc["type"] == "urn:stepgate:problem:code-already-used"
        assert doc["attempts_left"] == 5 and "wait for the next code" in doc["detail"]
        assert last not in reused.text
    (line,) = audit_events(gw, "heidi", "code_reused", 1)
    assert line["rule"] == "pay" and line["factor"] == "totp"
    assert last not in json.dumps(line)
    (issued,) = audit_events(gw, "heidi", "recovery_codes_issued", 1)
    assert issued["count"] == 10
    assert not any(c in gw.audit for c in codes) and secret not in gw.audit
    sent = audit_events(gw, "heidi", "code_sent", 4)
    assert [(e["factor"], e.get("enrolment", False)) for e in sent] == [
        ("email", True), ("sms", True), ("email", False), ("sms", False)]


def test_the_enrolment_limit_stops_a_flood(gw: GatewayProcess, mailbox: Mailbox) -> None:
    with Session(gw, "ivan") as s:
        for n in range(5):  # enrolment_sends_per_window's default
            r = s.post(f"{P}/factors/email", json={"address": f"flood{n}@example.org"})
            assert r.status_code == 201, r.text
            mailbox.code(f"flood{n}@example.org", 1)
        flood = s.post(f"{P}/factors/email", json={"address": "flood5@example.org"})
        assert flood.status_code == 429
        assert flood.json()["type"] == "urn:stepgate:problem:too-many-sends"
        assert "addresses being enrolled" in flood.json()["detail"]
        assert 0 < int(flood.headers["retry-after"]) <= 600
        time.sleep(0.3)
        assert mailbox.to("flood5@example.org") == []  # nothing sent
        assert len(s.get(f"{P}/factors").json()["factors"]) == 5  # nothing made
