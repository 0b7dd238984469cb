"""Reused TOTP codes through the endpoints: ``403 code-already-used`` (same code, or a code
of a step already used) without spending an attempt or counting a failure, audited as
``code_reused``; other factors keep answering ``wrong-code``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..totp_ref import hotp
from .conftest import MakeApp

pytestmark = pytest.mark.anyio
P = "/.stepgate"
NOW = 1_800_000_000.0
STEP = int(NOW // 30)
REUSED = "urn:stepgate:problem:code-already-used"


async def _enrolled(app: Any, client: Any) -> tuple[str, str, list[str]]:
    r = (await client.post(f"{P}/factors/totp", json={})).json()
    ok = await client.post(r["confirm_uri"], json={"code": hotp(r["secret"], STEP)})
    assert ok.status_code == 200, ok.text
    return r["secret"], r["id"], ok.json()["recovery_codes"]


def _events(app: Any) -> list[dict[str, Any]]:
    app.audit.flush()
    return [json.loads(line) for line in app.audit.out.getvalue().splitlines()]


async def test_verify_answers_code_already_used_without_spending_an_attempt(
        make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        assert app.clock() == NOW
        secret, fid, _codes = await _enrolled(app, client)  # the confirm used the current step
        ticket = (await client.post("/pay", json={})).json()["ticket"]
        ch = (await client.post(f"{P}/challenges", json={"ticket": ticket, "factor": "totp"})).json()
        for offset in (0, -1, 0):
            r = await client.post(ch["verify_uri"], json={"code": hotp(secret, STEP + offset)})
            assert r.status_code == 403
            assert r.headers["content-type"] == "application/problem+json"
            doc = r.json()
            assert doc["type"] == REUSED and doc["title"] == "Code already used"
            assert "wait for the next code" in doc["detail"]
            assert doc["attempts_left"] == 5  # nothing spent
            assert hotp(secret, STEP + offset) not in r.text
        wrong = "000000" if hotp(secret, STEP + 1) != "000000" else "111111"
        r = await client.post(ch["verify_uri"], json={"code": wrong})
        assert r.json()["type"] == "urn:stepgate:problem:wrong-code"
        assert r.json()["attempts_left"] == 4  # a wrong code still does
        state = (await client.get(f"{P}/challenges/{ch['challenge_id']}")).json()
        assert state["state"] == "pending" and state["attempts_left"] == 4
        assert (await app.store.user_lock("alice")).failures == 1  # the wrong code only
        ok = await client.post(ch["verify_uri"], json={"code": hotp(secret, STEP + 1)})
        assert ok.status_code == 200, ok.text
        events = _events(app)
        reused = [e for e in events if e["event"] == "code_reused"]
        assert len(reused) == 3
        assert reused[0].pop("request_id")  # every event names its request
        assert reused[0] == {"ts": reused[0]["ts"], "event": "code_reused", "user": "alice",
                             "rule": "pay", "factor": "totp", "factor_id": fid}
        assert [e["event"] for e in events].count("failed") == 1
        assert all(secret not in json.dumps(e) for e in events)


async def test_replays_never_lock_a_user(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        secret, _fid, _codes = await _enrolled(app, client)
        ticket = (await client.post("/pay", json={})).json()["ticket"]
        ch = (await client.post(f"{P}/challenges", json={"ticket": ticket})).json()
        for _ in range(12):  # beyond both the challenge's attempts and the lock threshold
            r = await client.post(ch["verify_uri"], json={"code": hotp(secret, STEP)})
            assert r.status_code == 403 and r.json()["type"] == REUSED
        assert (await app.store.user_lock("alice")).failures == 0
        ok = await client.post(ch["verify_uri"], json={"code": hotp(secret, STEP + 1)})
        assert ok.status_code == 200


async def test_confirm_answers_code_already_used(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        r = (await client.post(f"{P}/factors/totp", json={})).json()
        # the step was accepted for this pending factor, then the answer was lost (a
        # parallel double submit, a failure before activation)
        (pending,) = await app.store.factors("alice")
        assert await app.store.advance_counter(pending.id, STEP, NOW)
        again = await client.post(r["confirm_uri"], json={"code": hotp(r["secret"], STEP)})
        assert again.status_code == 403 and again.json()["type"] == REUSED
        assert "attempts_left" not in again.json()  # as for a wrong code: no challenge
        assert (await app.store.user_lock("alice")).failures == 0
        events = [e for e in _events(app) if e["event"] == "code_reused"]
        assert events and events[0]["action"] == "confirm" and events[0]["factor_id"] == r["id"]
        ok = await client.post(r["confirm_uri"], json={"code": hotp(r["secret"], STEP + 1)})
        assert ok.status_code == 200


async def test_a_used_recovery_code_stays_a_wrong_code(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        _secret, _fid, codes = await _enrolled(app, client)
        for status, name in ((200, None), (403, "wrong-code")):
            ticket = (await client.post("/pay", json={})).json()["ticket"]
            ch = (await client.post(f"{P}/challenges", json={"ticket": ticket,
                                                               "factor": "recovery"})).json()
            r = await client.post(ch["verify_uri"], json={"code": codes[0]})
            assert r.status_code == status, r.text
            if name is not None:
                assert r.json()["type"] == f"urn:stepgate:problem:{name}"


async def test_the_catalogue_and_the_document_know_the_problem(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        doc = (await client.get(f"{P}/openapi.json", auth=None)).json()
        for path in (f"{P}/challenges/{{challenge_id}}/verify", f"{P}/factors/{{factor_id}}/confirm"):
            schema = doc["paths"][path]["post"]["responses"]["403"]["content"][
                "application/problem+json"]["schema"]
            assert REUSED in schema["properties"]["type"]["enum"], path
        assert {"name": "code-already-used", "type": REUSED, "status": 403,
                "title": "Code already used"} in doc["x-problem-types"]
