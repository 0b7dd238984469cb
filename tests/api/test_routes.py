"""The own endpoints on starlette: routing under a configured prefix, refusals as
problem+json (never a 422, never a bare 500), and request bodies checked by their models."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.store import StoreUnavailable

from .conftest import ADMIN_KEY, MakeApp

pytestmark = pytest.mark.anyio
P = "/.stepgate"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def test_routes_follow_a_configured_prefix_ignoring_case_and_a_trailing_slash(
        make_app: MakeApp) -> None:
    async with make_app(prefix="/_2fa", paths={"case_insensitive": True}) as (app, client):
        for path in ("/_2fa/config", "/_2fa/config/", "/_2FA/config"):
            r = await client.get(path)
            assert r.status_code == 200, path
            assert r.json()["prefix"] == "/_2fa" and "cache-control" not in r.headers
        assert (await client.get("/_2fa/CONFIG")).status_code == 404  # routes keep their case
        assert (await client.get(f"{P}/config")).status_code != 200  # not the default prefix
        listed = await client.get("/_2fa/factors/")
        assert listed.status_code == 200 and listed.json() == {"factors": []}


@pytest.mark.parametrize("method,path,status,name,allow", [
    ("PUT", "/challenges", 405, "method-not-allowed", {"POST"}),
    ("PATCH", "/factors/f_x", 405, "method-not-allowed", {"POST", "DELETE"}),
    ("DELETE", "/config", 405, "method-not-allowed", {"GET", "HEAD"}),
    ("GET", "/nothing/here", 404, "not-found", None),
    ("GET", "", 404, "not-found", None),
])
async def test_routing_refusals_are_problems(make_app: MakeApp, method: str, path: str,
                                             status: int, name: str,
                                             allow: set[str] | None) -> None:
    async with make_app() as (_, client):
        r = await client.request(method, P + path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:stepgate:problem:{name}"
    if allow is not None:
        assert {m.strip() for m in r.headers["allow"].split(",")} == allow


SECRET = "497311"  # looks like a code: no refusal may repeat it


@pytest.mark.parametrize("path,kw,status,detail", [
    ("/challenges", {"json": {"ticket": None}}, 400, "expected 'ticket' to be a string, found null"),
    ("/challenges", {"json": {"factor": "totp"}}, 400, "expected a member 'ticket', found none"),
    ("/challenges", {"json": {"ticket": "t", "factor": ""}}, 400,
     "expected 'factor' to be a string of at least 1 character(s), found a string of 0 characters"),
    ("/challenges", {"json": [SECRET]}, 400, "expected a JSON object body, found a list"),
    ("/challenges", {"json": SECRET}, 400, "expected a JSON object body, found a string of 6 characters"),
    ("/challenges", {"content": b"", "headers": {"content-type": "application/json"}}, 400,
     "expected a JSON object body, found an empty body"),
    ("/challenges", {"content": b"{'ticket': 1}", "headers": {"content-type": "application/json"}},
     400, "expected a JSON object body, found invalid JSON"),
    ("/challenges", {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
     400, "expected a JSON object body, found invalid JSON"),
    ("/challenges", {"content": b"{}", "headers": {"content-type": "application/vnd.x+json"}},
     400, "expected a member 'ticket', found none"),
    ("/challenges", {"content": b"{}", "headers": {"content-type": "application/jsonp"}},
     415, "expected Content-Type application/json"),
    ("/challenges/AAAAAAAAAAAA/verify", {"json": {"code": int(SECRET)}}, 400,
     "expected 'code' to be a string, found a number"),
    ("/challenges/AAAAAAAAAAAA/verify", {"json": {"code": SECRET * 20}}, 400,
     "expected 'code' to be a string of at most 64 characters, found a string of 120 characters"),
    ("/factors/f_x/confirm", {"json": {}}, 400, "expected the factor's answer"),
    ("/factors/f_x/confirm", {"json": {"code": None}}, 400, "expected the factor's answer"),
    ("/factors/totp", {"json": {"label": SECRET * 20}}, 400,
     "expected 'label' to be a string of at most 64 characters"),
    ("/factors/totp", {"content": b"x" * (16 * 1024 + 1),
                       "headers": {"content-type": "application/json"}}, 413,
     "the body may hold at most 16384 bytes"),
])
async def test_bodies_are_checked_by_their_models(make_app: MakeApp, path: str, kw: dict[str, Any],
                                                  status: int, detail: str) -> None:
    async with make_app() as (_, client):
        r = await client.post(P + path, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith(detail)
    assert SECRET not in r.text


async def test_a_verify_answer_is_an_open_object(make_app: MakeApp) -> None:
    """The endpoint takes any members (a WebAuthn credential later); the factor says what
    it needs: TOTP wants a code."""
    async with make_app() as (_, client):
        enrol = await client.post(f"{P}/factors/totp", json={})
        r = await client.post(f"{P}/factors/{enrol.json()['id']}/confirm",
                              json={"credential": {"id": "x"}})
    assert r.status_code == 400
    assert r.json()["detail"] == "expected a string member 'code' holding the code, found none"


async def test_an_unexpected_error_is_an_internal_error_problem_and_logged(
        make_app: MakeApp, caplog: pytest.LogCaptureFixture) -> None:
    async with make_app() as (app, client):
        async def broken(*a: Any, **k: Any) -> Any:
            raise RuntimeError("a bug")
        app.store.audit = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="stepgate"):
            r = await client.get(f"{P}/admin/audit", headers=ADMIN, auth=None)
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json() == {"type": "urn:stepgate:problem:internal-error",
                            "title": "Internal error", "status": 500,
                            "request_id": r.json()["request_id"]}
        assert [rec.message for rec in caplog.records] == ["internal error"]
        assert (await client.get(f"{P}/config")).status_code == 200  # and it goes on


async def test_the_store_down_is_a_503_on_own_endpoints(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        async def broken(*a: Any, **k: Any) -> Any:
            raise StoreUnavailable("down")
        app.store.factors = broken  # type: ignore[method-assign]
        r = await client.get(f"{P}/factors")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["type"] == "urn:stepgate:problem:store-unavailable"


async def test_a_failed_change_gives_its_manage_token_back(make_app: MakeApp) -> None:
    async with make_app() as (app, client):
        codes = (await client.post(f"{P}/recovery-codes", json={})).json()["codes"]
        denied = await client.delete(f"{P}/factors/f_nope")
        assert denied.status_code == 401 and denied.json()["rule"] == "stepgate:manage"
        ch = await client.post(f"{P}/challenges", json={"ticket": denied.json()["ticket"]})
        token = (await client.post(ch.json()["verify_uri"],
                                   json={"code": codes[0]})).json()["token"]
        h = {"X-Stepgate-Token": token}
        # the change fails (no such factor): the single-use token stays usable
        for _ in range(2):
            assert (await client.delete(f"{P}/factors/f_nope", headers=h)).status_code == 404
        assert (await client.delete(f"{P}/factors/recovery", headers=h)).status_code == 401
