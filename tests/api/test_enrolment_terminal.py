"""Enrolling TOTP from a terminal: ``Accept: text/plain`` (or ``format=text``) answers a QR
code in Unicode half blocks that holds the otpauth URI, the secret, the factor id and the
confirm command; JSON stays the default; a bad ``format`` creates nothing."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import segno

from gateway.api.bodies import accept_weight

from ..totp_ref import hotp
from .conftest import MakeApp

pytestmark = pytest.mark.anyio
P = "/.stepgate"
TEXT = {"Accept": "text/plain"}
SMS = {"totp": {"issuer": "Test Bank"}, "sms": {"deliver": {"command": ["true"]}}}


def matrix_of(text: str) -> list[list[int]]:
    """The modules the half blocks draw (1 dark), quiet zone included: each character is
    two modules, one above the other; a drawn half is a light module."""
    lines = [line for line in text.splitlines() if line and set(line) <= set(" █▀▄")]
    top = {" ": 1, "▀": 0, "▄": 1, "█": 0}
    bottom = {" ": 1, "▀": 1, "▄": 0, "█": 0}
    rows: list[list[int]] = []
    for line in lines:
        rows.append([top[c] for c in line])
        rows.append([bottom[c] for c in line])
    return rows


def field(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}:\s+(\S+)", text, re.M)
    assert m is not None, (name, text)
    return m.group(1)


async def test_text_plain_enrolment_is_a_terminal_qr_code_and_a_command(make_app: MakeApp) -> None:
    async with make_app(factors={"totp": {"issuer": "Test Bank"}}) as (app, client):
        r = await client.post(f"{P}/factors/totp", json={"label": "phone"}, headers=TEXT)
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
        assert "accept" in r.headers["vary"].lower()
        text = r.text
        secret, uri = field(text, "Secret"), field(text, "otpauth URI")
        fid = field(text, "Factor id")
        assert re.fullmatch(r"[A-Z2-7]{32}", secret)
        parts = urlsplit(uri)
        assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
        assert parse_qs(parts.query)["secret"] == [secret]
        assert parse_qs(parts.query)["issuer"] == ["Test Bank"]
        # the half blocks are exactly the QR code of the URI, quiet zone included
        code = segno.make(uri, error="m", micro=False)
        expected = [list(row) for row in code.matrix_iter(scale=1, border=4)]
        drawn = matrix_of(text)
        assert drawn[:len(expected)] == expected
        assert all(all(m == 1 for m in row) for row in drawn[len(expected):])  # padding only
        assert max(len(row) for row in drawn) <= 80 and len(drawn) <= 2 * 30  # fits a terminal
        # the command to run next, with this factor and this gateway
        confirm = f"http://gw.test{P}/factors/{fid}/confirm"
        assert "curl -u alice -X POST -H 'Content-Type: application/json'" in text
        assert confirm in text and '{"code": "123456"}' in text
        assert "(phone, pending until confirmed)" in text
        # and it works: the secret shown is the factor's
        listed = (await client.get(f"{P}/factors")).json()["factors"]
        assert [(f["id"], f["status"]) for f in listed] == [(fid, "pending")]
        ok = await client.post(confirm.removeprefix("http://gw.test"),
                               json={"code": hotp(secret, int(app.clock() // 30))})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("query,accept,form", [
    ("", None, "json"),
    ("", "*/*", "json"),
    ("", "application/json", "json"),
    ("", "text/plain", "text"),
    ("", "text/*", "text"),
    ("", "text/plain, application/json", "json"),  # a tie: JSON, the default
    ("", "application/json;q=0.5, text/plain", "text"),
    ("", "text/plain;q=0.2, */*;q=0.5", "json"),
    ("", "text/plain;q=bogus, application/json;q=0.1", "json"),  # a malformed weight: skipped
    ("", "image/png", "json"),  # nothing acceptable: JSON anyway
    ("?format=text", None, "text"),
    ("?format=text", "application/json", "text"),  # the query is an order
    ("?format=json", "text/plain", "json"),
])
async def test_the_representation_follows_format_then_accept(make_app: MakeApp, query: str,
                                                             accept: str | None, form: str) -> None:
    async with make_app() as (_app, client):
        headers = {"Accept": accept} if accept is not None else {}
        r = await client.post(f"{P}/factors/totp{query}", json={}, headers=headers)
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        if form == "text":
            assert r.headers["content-type"].startswith("text/plain")
            assert "Secret:" in r.text
        else:
            assert r.headers["content-type"] == "application/json"
            assert set(r.json()) >= {"id", "secret", "otpauth_uri", "qr_svg", "confirm_uri"}


@pytest.mark.parametrize("path,detail", [
    ("/factors/totp?format=svg", "expected 'format' to be 'json' or 'text'"),
    ("/factors/totp?format=", "expected 'format' to be 'json' or 'text'"),
    ("/factors/totp?format=text&format=json", "expected one 'format' parameter, found 2"),
    ("/recovery-codes?format=text", "enrolling recovery has no text form"),
    ("/factors/sms?format=text", "enrolling sms has no text form"),
])
async def test_a_bad_format_is_refused_before_anything_is_made(make_app: MakeApp, path: str,
                                                               detail: str) -> None:
    async with make_app(factors=SMS) as (app, client):
        body = {"address": "+33612345678"} if "sms" in path else {}
        r = await client.post(P + path, json=body, headers=TEXT)
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:stepgate:problem:invalid-query"
        assert detail in r.json()["detail"] and "svg" not in r.json()["detail"]
        assert (await client.get(f"{P}/factors")).json()["factors"] == []
        assert await app.store.recovery_codes_left("alice") == 0


async def test_factors_without_a_text_form_answer_json_to_accept(make_app: MakeApp) -> None:
    async with make_app(factors=SMS) as (_app, client):
        r = await client.post(f"{P}/factors/sms", json={"address": "+33612345678"}, headers=TEXT)
        assert r.status_code == 201 and r.headers["content-type"] == "application/json"
        r = await client.post(f"{P}/recovery-codes", json={}, headers=TEXT)
        assert r.status_code == 201 and r.headers["content-type"] == "application/json"
        assert len(r.json()["codes"]) == 10


async def test_errors_stay_problem_json_and_step_up_still_applies(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        anonymous = await client.post(f"{P}/factors/totp", json={}, headers=TEXT, auth=None)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        first = (await client.post(f"{P}/factors/totp", json={})).json()
        await client.post(first["confirm_uri"],
                          json={"code": hotp(first["secret"], int(app.clock() // 30))})
        second = await client.post(f"{P}/factors/totp?format=text", json={}, headers=TEXT)
        assert second.status_code == 401 and second.json()["rule"] == "stepgate:manage"
        assert "Secret" not in second.text


async def test_the_confirm_command_names_the_gateway_behind_a_trusted_proxy(
        make_app: MakeApp) -> None:
    async with make_app(trusted_proxies=["127.0.0.0/8"]) as (app, _client):
        forwarded = {**TEXT, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "2fa.example.com"}
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test",
                                     auth=("alice", "pw")) as proxied:
            r = await proxied.post(f"{P}/factors/totp", json={}, headers=forwarded)
            assert f"https://2fa.example.com{P}/factors/" in r.text
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test",
                                     auth=("bob", "pw")) as direct:
            r = await direct.post(f"{P}/factors/totp", json={}, headers=forwarded)
            assert f"http://gw.test{P}/factors/" in r.text and "2fa.example.com" not in r.text


@pytest.mark.parametrize("accept,media,q", [
    ("text/plain", "text/plain", 1.0),
    ("text/plain;q=0.3", "text/plain", 0.3),
    ("text/*;q=0.4, text/plain;q=0.2", "text/plain", 0.2),  # the most specific range wins
    ("*/*;q=0.1", "application/json", 0.1),
    ("TEXT/PLAIN; Q=0.5", "text/plain", 0.5),
    ("text/plain;q=1.5", "text/plain", 0.0),
    ("text/plain;q=nan", "text/plain", 0.0),
    ("", "text/plain", 0.0),
])
def test_accept_weights(accept: str, media: str, q: float) -> None:
    assert accept_weight(accept, media) == q


async def test_the_openapi_document_declares_the_text_form(make_app: MakeApp) -> None:
    async with make_app(factors=SMS) as (_app, client):
        doc = (await client.get(f"{P}/openapi.json", auth=None)).json()
        for path in (f"{P}/factors/totp", f"{P}/factors/{{factor}}"):
            op = doc["paths"][path]["post"]
            content = op["responses"]["201"]["content"]
            assert set(content) == {"application/json", "text/plain"}, path
            assert content["text/plain"]["schema"]["type"] == "string"
            (fmt,) = [p for p in op["parameters"] if p["name"] == "format"]
            assert fmt["in"] == "query" and fmt["schema"]["enum"] == ["json", "text"]
            bad = op["responses"]["400"]["content"]["application/problem+json"]["schema"]
            assert "urn:stepgate:problem:invalid-query" in bad["properties"]["type"]["enum"]
        sms = doc["paths"][f"{P}/factors/sms"]["post"]
        assert set(sms["responses"]["201"]["content"]) == {"application/json"}
        assert "parameters" not in sms
