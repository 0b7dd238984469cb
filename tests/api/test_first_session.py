"""A first session in-process, on a frozen clock: recovery codes come with the first
confirmed factor only; codes sent while enrolling count against their own limit, so a user
who enrols two channels can answer an all_of rule at once, and a flood of enrolments still
stops."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from ..conftest import HERE
from ..totp_ref import hotp
from .conftest import MakeApp

pytestmark = pytest.mark.anyio
P = "/.stepgate"
NOW = 1_800_000_000.0
STEP = int(NOW // 30)
CODE = re.compile(r"code is (\d{6})")
FORMAT = re.compile(r"[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}")
BOTH = [{"name": "both", "match": {"paths": ["/both"]},
         "require": {"factors": {"all_of": ["sms", "email"]}, "binding": "route"}},
        {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
         "require": {"factors": ["totp", "recovery"], "binding": "request"}}]


def channels(outbox: Path, **throttle: Any) -> dict[str, Any]:
    send = {"command": [sys.executable, str(HERE / "send_code.py"), str(outbox)]}
    doc: dict[str, Any] = {"factors": {"totp": {}, "sms": {"deliver": send},
                                       "email": {"deliver": send}}}
    if throttle:
        doc["throttle"] = throttle
    return doc


def code_for(outbox: Path, address: str) -> str:
    sent = [json.loads(line) for line in outbox.read_text().splitlines()]
    m = CODE.search([s for s in sent if s["address"] == address][-1]["message"])
    assert m is not None
    return m.group(1)


def events(app: Any, name: str) -> list[dict[str, Any]]:
    app.audit.flush()
    return [e for e in map(json.loads, app.audit.out.getvalue().splitlines())
            if e["event"] == name]


async def enrol_totp(client: Any, step: int = STEP, **kw: Any) -> tuple[dict[str, Any], Any]:
    r = await client.post(f"{P}/factors/totp", json={}, **kw)
    assert r.status_code == 201, r.text
    doc = r.json()
    ok = await client.post(doc["confirm_uri"], json={"code": hotp(doc["secret"], step)})
    assert ok.status_code == 200, ok.text
    return doc, ok


async def manage_token(client: Any, method: str, path: str, code: str, **kw: Any) -> str:
    denied = await client.request(method, path, **kw)
    assert denied.status_code == 401 and denied.json()["rule"] == "stepgate:manage"
    ch = (await client.post(f"{P}/challenges", json={"ticket": denied.json()["ticket"],
                                                     "factor": "recovery"})).json()
    verified = await client.post(ch["verify_uri"], json={"code": code})
    assert verified.status_code == 200, verified.text
    return str(verified.json()["token"])


# ------------------------------------------------------------------ recovery codes

async def test_the_first_confirm_answers_recovery_codes_once(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        _doc, ok = await enrol_totp(client)
        assert ok.headers["cache-control"] == "no-store"
        body = ok.json()
        codes = body.pop("recovery_codes")
        assert body == {"id": _doc["id"], "type": "totp", "status": "active"}
        assert len(codes) == 10 and len(set(codes)) == 10
        assert all(FORMAT.fullmatch(c) for c in codes)
        listed = (await client.get(f"{P}/factors")).json()["factors"]
        assert listed[-1]["id"] == "recovery" and listed[-1]["remaining"] == 10
        (issued,) = events(app, "recovery_codes_issued")
        assert issued["count"] == 10 and issued["with_factor"] == _doc["id"]
        app.audit.flush()
        assert not any(c in app.audit.out.getvalue() for c in codes)  # never audited
        # the codes work, and a second factor's confirmation answers none
        path = f"{P}/factors/totp"
        token = await manage_token(client, "POST", path, codes[0], json={"label": "tablet"})
        second = await client.post(path, json={"label": "tablet"},
                                   headers={"X-Stepgate-Token": token})
        assert second.status_code == 201, second.text
        again = await client.post(second.json()["confirm_uri"],
                                  json={"code": hotp(second.json()["secret"], STEP)})
        assert again.status_code == 200 and "recovery_codes" not in again.json()
        assert await app.store.recovery_codes_left("alice") == 9
        assert len(events(app, "recovery_codes_issued")) == 1


async def test_no_codes_for_a_user_who_has_some(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        own = await client.post(f"{P}/recovery-codes", json={})  # before any factor: allowed
        assert own.status_code == 201
        mine = own.json()["codes"]
        token = await manage_token(client, "POST", f"{P}/factors/totp", mine[0], json={})
        _doc, ok = await enrol_totp(client, headers={"X-Stepgate-Token": token})
        assert "recovery_codes" not in ok.json()
        assert await app.store.recovery_codes_left("alice") == 9  # the user's set stays
        ticket = (await client.post("/pay", json={})).json()["ticket"]
        ch = (await client.post(f"{P}/challenges", json={"ticket": ticket,
                                                         "factor": "recovery"})).json()
        assert (await client.post(ch["verify_uri"], json={"code": mine[1]})).status_code == 200
        assert events(app, "recovery_codes_issued") == []


async def test_a_refused_confirm_issues_nothing(make_app: MakeApp) -> None:
    async with make_app(factors={"totp": {}, "recovery": {"count": 6}}) as (app, client):
        doc = (await client.post(f"{P}/factors/totp", json={})).json()
        wrong = "000000" if hotp(doc["secret"], STEP) != "000000" else "111111"
        r = await client.post(doc["confirm_uri"], json={"code": wrong})
        assert r.status_code == 403 and "recovery_codes" not in r.text
        assert await app.store.recovery_codes_left("alice") == 0
        ok = await client.post(doc["confirm_uri"], json={"code": hotp(doc["secret"], STEP)})
        assert len(ok.json()["recovery_codes"]) == 6  # factors.recovery.count


async def test_the_first_delivered_factor_brings_codes_too(make_app: MakeApp,
                                                          tmp_path: Path) -> None:
    outbox = tmp_path / "sent.jsonl"
    async with make_app(rules=BOTH, **channels(outbox)) as (_app, client):
        r = (await client.post(f"{P}/factors/email", json={"address": "a@example.org"})).json()
        ok = await client.post(r["confirm_uri"], json={"code": code_for(outbox, "a@example.org")})
        assert ok.status_code == 200 and len(ok.json()["recovery_codes"]) == 10


# ------------------------------------------------------------------ enrolment sends

async def test_two_channels_then_an_all_of_request_never_429(make_app: MakeApp,
                                                             tmp_path: Path) -> None:
    outbox = tmp_path / "sent.jsonl"
    async with make_app(rules=BOTH, **channels(outbox)) as (app, client):
        codes: list[str] = []
        for channel, address in (("sms", "+33612345678"), ("email", "a@example.org")):
            path = f"{P}/factors/{channel}"
            headers = {}
            if codes:  # the second channel is a change: a manage token, by recovery code
                headers["X-Stepgate-Token"] = await manage_token(
                    client, "POST", path, codes.pop(), json={"address": address})
            r = await client.post(path, json={"address": address}, headers=headers)
            assert r.status_code == 201, r.text
            ok = await client.post(r.json()["confirm_uri"],
                                   json={"code": code_for(outbox, address)})
            assert ok.status_code == 200, ok.text
            codes += ok.json().get("recovery_codes", [])
        ticket = (await client.get("/both")).json()["ticket"]
        for channel, address in (("sms", "+33612345678"), ("email", "a@example.org")):
            ch = await client.post(f"{P}/challenges", json={"ticket": ticket, "factor": channel})
            assert ch.status_code == 201, ch.text  # 4 sends in all: one limit would say 429
            v = await client.post(ch.json()["verify_uri"], json={"code": code_for(outbox, address)})
            assert v.status_code == 200, v.text
        token = v.json()["token"]
        assert (await client.get("/both", headers={"X-Stepgate-Token": token})).status_code == 200
        enrolment = [e for e in events(app, "code_sent") if e.get("enrolment")]
        assert [e["factor"] for e in enrolment] == ["sms", "email"]


async def test_a_flood_of_enrolments_stops_at_the_enrolment_limit(make_app: MakeApp,
                                                                  tmp_path: Path) -> None:
    outbox = tmp_path / "sent.jsonl"
    async with make_app(rules=BOTH, **channels(outbox)) as (app, client):
        for n in range(5):  # the default
            r = await client.post(f"{P}/factors/sms", json={"address": f"+3361234567{n}"})
            assert r.status_code == 201, r.text
        flood = await client.post(f"{P}/factors/sms", json={"address": "+33612345679"})
        assert flood.status_code == 429
        doc = flood.json()
        assert doc["type"] == "urn:stepgate:problem:too-many-sends"
        assert doc["detail"] == ("at most 5 codes are sent to addresses being enrolled per "
                                 "10 minutes")
        assert "+3361234567" not in flood.text
        assert flood.headers["retry-after"] == str(doc["retry_after"])
        assert 0 < int(flood.headers["retry-after"]) <= 600
        assert len(outbox.read_text().splitlines()) == 5  # nothing sent,
        assert len((await client.get(f"{P}/factors")).json()["factors"]) == 5  # nothing made
        # the limit is the user's, whatever the channel; the next window opens it again
        r = await client.post(f"{P}/factors/email", json={"address": "a@example.org"})
        assert r.status_code == 429
        app.clock.t += 600
        r = await client.post(f"{P}/factors/email", json={"address": "a@example.org"})
        assert r.status_code == 201


async def test_the_enrolment_limit_is_configurable(make_app: MakeApp, tmp_path: Path) -> None:
    outbox = tmp_path / "sent.jsonl"
    config = channels(outbox, enrolment_sends_per_window=1, sends_per_window=1)
    async with make_app(rules=BOTH, **config) as (app, client):
        assert app.settings.throttle.enrolment_sends_per_window == 1
        r = await client.post(f"{P}/factors/sms", json={"address": "+33612345678"})
        assert r.status_code == 201
        again = await client.post(f"{P}/factors/sms", json={"address": "+33612345670"})
        assert again.status_code == 429
        assert "at most 1 codes are sent to addresses being enrolled" in again.json()["detail"]


async def test_a_failed_enrolment_send_is_given_back(make_app: MakeApp, tmp_path: Path) -> None:
    broken = {"command": [sys.executable, str(HERE / "send_code.py"), str(tmp_path / "x"), "3"]}
    async with make_app(rules=BOTH, factors={"totp": {}, "sms": {"deliver": broken}, "email": {
            "deliver": broken}}, throttle={"enrolment_sends_per_window": 2}) as (app, client):
        for _ in range(4):
            r = await client.post(f"{P}/factors/sms", json={"address": "+33612345678"})
            assert r.status_code == 502 and r.json()["type"] == "urn:stepgate:problem:delivery-failed"
        assert events(app, "delivery_failed") and not events(app, "code_sent")
