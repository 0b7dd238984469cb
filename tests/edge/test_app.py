"""The decision path and endpoints in-process: httpx.ASGITransport, a MockTransport upstream,
a frozen clock. Covers what real time makes slow: expiry, lock backoff, replay windows."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import respx
import yaml

from gateway.audit import Audit
from gateway.config.load import load_settings
from gateway.http.app import Gateway, create_app
from gateway.keys import KeyRing, generate_data_key, generate_signing_key
from gateway.problems import Problem
from gateway.proxy import HttpxForwarder
from gateway.store import StoreUnavailable

from ..totp_ref import hotp

pytestmark = pytest.mark.anyio
P = "/.stepgate"
PW = "pw"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


RULES = {"rules": [
    {"name": "open", "match": {"paths": ["/open/**"]}, "action": "allow"},
    {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
     "require": {"factors": ["totp", "recovery"], "binding": "request"}},
    {"name": "fresh", "match": {"paths": ["/fresh"]},
     "require": {"factors": ["totp"], "binding": "session", "max_age": "1m", "ttl": "10m"}},
    {"name": "both", "match": {"paths": ["/both"]},
     "require": {"factors": {"all_of": ["totp", "recovery"]}, "binding": "route"}},
    {"name": "sess", "match": {"paths": ["/sess/**"]},
     "require": {"factors": ["totp"], "binding": "session", "scope": "s", "ttl": "2m"}},
    {"name": "oauth", "match": {"paths": ["/oauth"]},
     "require": {"factors": ["totp"], "challenge_style": "rfc9470", "acr_values": "urn:x:2fa"}},
]}


class Env:
    def __init__(self, app: Gateway, client: httpx.AsyncClient, clock: Clock, audit: io.StringIO,
                 upstream: list[httpx.Request]) -> None:
        self.app, self.client, self.clock, self.audit, self.upstream = app, client, clock, audit, upstream

    async def enrol(self, user: str) -> str:
        r = await self.client.post(f"{P}/factors/totp", json={}, auth=(user, PW))
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        ok = await self.client.post(f"{P}/factors/{r.json()['id']}/confirm", auth=(user, PW),
                                    json={"code": self.code(secret, 0)})
        assert ok.status_code == 200
        return secret

    def code(self, secret: str, offset: int = 0) -> str:
        return hotp(secret, int(self.clock() // 30) + offset)

    async def challenge(self, user: str, method: str, path: str, factor: str | None = None,
                        **kw: Any) -> dict[str, Any]:
        r = await self.client.request(method, path, auth=(user, PW), **kw)
        assert r.status_code == 401, r.text
        body = {"ticket": r.json()["ticket"]}
        if factor:
            body["factor"] = factor
        ch = await self.client.post(f"{P}/challenges", auth=(user, PW), json=body)
        assert ch.status_code == 201, ch.text
        return ch.json()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "r.yaml").write_text(yaml.safe_dump(RULES))
    salt = bcrypt.gensalt(rounds=4)
    (tmp_path / "users").write_text("".join(
        f"{u}:{bcrypt.hashpw(PW.encode(), salt).decode()}\n" for u in ("alice", "bob", "carol")))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "upstream": {"url": "http://upstream.test"}, "policies": "policies/",
        "store": "sqlite:///s.db", "identity": {"basic": {"htpasswd": "users"}},
        "realm": "unit"}))
    settings = load_settings(tmp_path / "c.yaml")
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})
    clock = Clock()
    out = io.StringIO()
    app = create_app(settings, forwarder=HttpxForwarder("http://upstream.test",
                                                        transport=httpx.MockTransport(upstream)),
                     keys=KeyRing([generate_signing_key()], [generate_data_key()]), clock=clock,
                     audit=Audit("-", None, clock, stream=out))
    app.audit.store = app.store
    await app.startup()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw.test") as client:
        yield Env(app, client, clock, out, seen)
    await app.shutdown()


async def test_challenge_lifecycle_statuses(env: Env) -> None:
    secret = await env.enrol("alice")
    ch = await env.challenge("alice", "POST", "/pay", json={"a": 1})
    assert ch["factor"] == "totp" and ch["attempts_left"] == 5 and ch["expires_in"] == 300
    wrong = await env.client.post(ch["verify_uri"], auth=("alice", PW), json={"code": "000000"})
    assert wrong.status_code == 403 and wrong.json()["attempts_left"] == 4
    assert wrong.headers["content-type"] == "application/problem+json"
    env.clock.t += 301
    expired = await env.client.post(ch["verify_uri"], auth=("alice", PW),
                                    json={"code": env.code(secret)})
    assert expired.status_code == 410 and expired.json()["state"] == "expired"
    state = await env.client.get(f"{P}/challenges/{ch['challenge_id']}", auth=("alice", PW))
    assert state.json()["state"] == "expired"
    ch2 = await env.challenge("alice", "POST", "/pay", json={"a": 1})
    ok = await env.client.post(ch2["verify_uri"], auth=("alice", PW), json={"code": env.code(secret)})
    assert ok.status_code == 200
    assert ok.headers["cache-control"] == "no-store"
    assert set(ok.json()) >= {"token", "token_header", "expires_in", "binding", "uses"}
    assert ok.json()["expires_in"] == 120
    again = await env.client.post(ch2["verify_uri"], auth=("alice", PW), json={"code": "111111"})
    assert again.status_code == 410
    r = await env.client.post("/pay", json={"a": 1}, auth=("alice", PW),
                              headers={"X-Stepgate-Token": ok.json()["token"]})
    assert r.status_code == 200 and len(env.upstream) == 1
    env.clock.t += 121
    late = await env.challenge("alice", "POST", "/pay", json={"a": 1})
    assert late["factor"] == "totp"


async def test_totp_code_is_never_accepted_twice(env: Env) -> None:
    secret = await env.enrol("alice")  # confirm used the current step
    ch = await env.challenge("alice", "POST", "/pay", json={})
    same = await env.client.post(ch["verify_uri"], auth=("alice", PW), json={"code": env.code(secret)})
    assert same.status_code == 403
    older = await env.client.post(ch["verify_uri"], auth=("alice", PW),
                                  json={"code": env.code(secret, -1)})
    assert older.status_code == 403
    nxt = await env.client.post(ch["verify_uri"], auth=("alice", PW),
                                json={"code": env.code(secret, +1)})
    assert nxt.status_code == 200


async def test_lockout_backoff_and_hard_lock(env: Env) -> None:
    await env.enrol("bob")
    statuses = []
    for _ in range(3):
        ch = await env.challenge("bob", "POST", "/pay", json={})
        for _ in range(4):
            r = await env.client.post(ch["verify_uri"], auth=("bob", PW), json={"code": "999999"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
        if statuses[-1] == 429:
            break
    assert statuses.count(429) == 1 and statuses[-1] == 429
    assert r.headers["retry-after"] == "300"
    env.clock.t += 299
    blocked = await env.client.post(f"{P}/challenges", auth=("bob", PW), json={"ticket": "x"})
    assert blocked.status_code in (400, 429)
    env.clock.t += 2
    # the next ten failures lock for twice as long
    failures = 0
    while failures < 10:
        ch = await env.challenge("bob", "POST", "/pay", json={})
        for _ in range(min(4, 10 - failures)):
            r = await env.client.post(ch["verify_uri"], auth=("bob", PW), json={"code": "999999"})
            failures += 1
    assert r.status_code == 429 and r.headers["retry-after"] == "600"
    # a hard lock after 100 consecutive failures needs an administrator
    for _ in range(80):
        with contextlib.suppress(Problem):
            await env.app.context.regulator.failure("bob")
    env.clock.t += 10_000
    r = await env.client.post("/pay", json={}, auth=("bob", PW))
    ticket = r.json()["ticket"]
    hard = await env.client.post(f"{P}/challenges", auth=("bob", PW), json={"ticket": ticket})
    assert hard.status_code == 429 and "retry-after" not in hard.headers
    await env.app.store.reset_failures("bob")
    ok = await env.client.post(f"{P}/challenges", auth=("bob", PW), json={"ticket": ticket})
    assert ok.status_code == 201


async def test_challenge_creation_is_rate_limited(env: Env) -> None:
    await env.enrol("carol")
    r = await env.client.post("/pay", json={}, auth=("carol", PW))
    ticket = r.json()["ticket"]
    codes = [(await env.client.post(f"{P}/challenges", auth=("carol", PW),
                                    json={"ticket": ticket})).status_code for _ in range(11)]
    assert codes == [201] * 10 + [429]


async def test_all_of_needs_every_factor(env: Env) -> None:
    secret = await env.enrol("alice")
    env.clock.t += 30
    # recovery codes need a manage token now that alice has TOTP
    r = await env.client.post(f"{P}/recovery-codes", json={}, auth=("alice", PW))
    assert r.status_code == 401 and r.json()["rule"] == "stepgate:manage"
    ch = await env.client.post(f"{P}/challenges", auth=("alice", PW), json={"ticket": r.json()["ticket"]})
    tok = await env.client.post(ch.json()["verify_uri"], auth=("alice", PW),
                                json={"code": env.code(secret)})
    rc = await env.client.post(f"{P}/recovery-codes", json={}, auth=("alice", PW),
                               headers={"X-Stepgate-Token": tok.json()["token"]})
    assert rc.status_code == 201 and len(rc.json()["codes"]) == 10
    env.clock.t += 30
    first = await env.challenge("alice", "GET", "/both")
    assert first["factor"] == "totp"
    v1 = await env.client.post(first["verify_uri"], auth=("alice", PW), json={"code": env.code(secret)})
    assert v1.status_code == 200 and "token" not in v1.json()
    assert v1.json()["remaining"] == ["recovery"]
    # one factor alone is not enough: without a token the route still challenges
    assert (await env.client.get("/both", auth=("alice", PW))).status_code == 401
    r = await env.client.get("/both", auth=("alice", PW))
    second = await env.client.post(f"{P}/challenges", auth=("alice", PW),
                                   json={"ticket": r.json()["ticket"]})
    assert second.json()["factor"] == "totp"  # a new ticket starts over
    # finishing the first ticket needs the recovery code on that same ticket
    r1 = await env.client.get(f"{P}/challenges/{first['challenge_id']}", auth=("alice", PW))
    assert r1.json()["state"] == "verified"


async def test_all_of_completes_on_one_ticket(env: Env) -> None:
    secret = await env.enrol("bob")
    env.clock.t += 30
    r = await env.client.post(f"{P}/recovery-codes", json={}, auth=("bob", PW))
    ch = await env.client.post(f"{P}/challenges", auth=("bob", PW), json={"ticket": r.json()["ticket"]})
    tok = await env.client.post(ch.json()["verify_uri"], auth=("bob", PW), json={"code": env.code(secret)})
    codes = (await env.client.post(f"{P}/recovery-codes", json={}, auth=("bob", PW),
                                   headers={"X-Stepgate-Token": tok.json()["token"]})).json()["codes"]
    env.clock.t += 30
    r = await env.client.get("/both", auth=("bob", PW))
    ticket = r.json()["ticket"]
    assert r.json()["all_of"] is True
    c1 = (await env.client.post(f"{P}/challenges", auth=("bob", PW), json={"ticket": ticket})).json()
    await env.client.post(c1["verify_uri"], auth=("bob", PW), json={"code": env.code(secret)})
    c2 = (await env.client.post(f"{P}/challenges", auth=("bob", PW), json={"ticket": ticket})).json()
    assert c2["factor"] == "recovery"
    v2 = await env.client.post(c2["verify_uri"], auth=("bob", PW), json={"code": codes[0]})
    token = v2.json()["token"]
    ok = await env.client.get("/both", auth=("bob", PW), headers={"X-Stepgate-Token": token})
    assert ok.status_code == 200
    assert ok.status_code == 200 and env.upstream[-1].headers["x-stepgate-factor"] == "totp+recovery"


async def test_max_age_and_rfc9470(env: Env) -> None:
    secret = await env.enrol("carol")
    ch = await env.challenge("carol", "GET", "/fresh")
    tok = (await env.client.post(ch["verify_uri"], auth=("carol", PW),
                                 json={"code": env.code(secret, 1)})).json()["token"]
    h = {"X-Stepgate-Token": tok}
    assert (await env.client.get("/fresh", auth=("carol", PW), headers=h)).status_code == 200
    env.clock.t += 61
    stale = await env.client.get("/fresh", auth=("carol", PW), headers=h)
    assert stale.status_code == 401 and stale.json()["detail"] == "factor verification is too old"
    r = await env.client.get("/oauth", auth=("carol", PW))
    values = r.headers.get_list("www-authenticate")
    assert values[0].startswith("SecondFactor ")
    assert values[1] == ('Bearer error="insufficient_user_authentication", error_description='
                         '"A second factor is required", acr_values="urn:x:2fa"')


async def test_store_down_fails_closed(env: Env) -> None:
    await env.enrol("alice")

    async def broken(*a: Any, **k: Any) -> Any:
        raise StoreUnavailable("down")
    env.app.store.factors = broken  # type: ignore[method-assign]
    env.app.store.reserve_use = broken  # type: ignore[method-assign]
    r = await env.client.post("/pay", json={}, auth=("alice", PW))
    assert r.status_code == 503
    assert r.json()["type"] == "urn:stepgate:problem:store-unavailable"
    assert env.upstream == []
    assert (await env.client.get("/open/x")).status_code == 200  # allowed routes need no store


BAD_INPUT = [
    ("POST", f"{P}/challenges", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "invalid-body"),
    ("POST", f"{P}/challenges", {"content": b"[]", "headers": {"content-type": "application/json"}}, 400, "invalid-body"),
    ("POST", f"{P}/challenges", {"json": {}}, 400, "invalid-body"),
    ("POST", f"{P}/challenges", {"json": {"ticket": 5}}, 400, "invalid-body"),
    ("POST", f"{P}/challenges", {"json": {"ticket": "garbage"}}, 400, "invalid-ticket"),
    ("POST", f"{P}/challenges", {"content": b'{"ticket":"x"}', "headers": {"content-type": "text/plain"}}, 415, "unsupported-media-type"),
    ("POST", f"{P}/challenges", {"json": {"ticket": "x" * 20000}}, 413, "body-too-large"),
    ("POST", f"{P}/challenges", {"content": b"[" * 5000 + b"]" * 5000,
                                 "headers": {"content-type": "application/json"}}, 400, "invalid-body"),
    ("POST", f"{P}/challenges/abc/verify", {"json": {"code": "123456"}}, 404, "not-found"),
    ("POST", f"{P}/challenges/%2e%2e/verify", {"json": {}}, 400, "non-canonical-path"),
    ("POST", f"{P}/challenges/AAAAAAAAAAAA/verify", {"json": {"code": 123456}}, 400, "invalid-body"),
    ("GET", f"{P}/challenges/AAAAAAAAAAAA", {}, 404, "not-found"),
    ("PUT", f"{P}/challenges", {}, 405, "method-not-allowed"),
    ("POST", f"{P}/factors/nope/confirm", {"json": {"code": "123456"}}, 404, "not-found"),
    ("POST", f"{P}/factors/nope/confirm", {"json": {"code": None}}, 400, "invalid-body"),
    ("DELETE", f"{P}/factors/nope", {}, 404, "not-found"),
    ("POST", f"{P}/factors/totp", {"json": {"label": 7}}, 400, "invalid-body"),
    ("GET", f"{P}/nothing", {}, 404, "not-found"),
    ("POST", "/pay", {"content": b"x" * (1024 * 1024 + 1)}, 413, "body-too-large"),
]


@pytest.mark.parametrize("method,path,kw,status,name", BAD_INPUT)
async def test_bad_input_is_a_problem(env: Env, method: str, path: str, kw: dict[str, Any],
                                      status: int, name: str) -> None:
    r = await env.client.request(method, path, auth=("alice", PW), **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:stepgate:problem:{name}"
    assert env.upstream == []


async def test_endpoints_need_the_first_factor(env: Env) -> None:
    for method, path in [("GET", f"{P}/factors"), ("POST", f"{P}/factors/totp"),
                         ("POST", f"{P}/challenges"), ("POST", f"{P}/recovery-codes")]:
        r = await env.client.request(method, path, auth=("alice", "wrong"),
                                     json={} if method == "POST" else None)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == 'Basic realm="unit", charset="UTF-8"'
    cfg = await env.client.get(f"{P}/config")
    assert cfg.json() == {"factors": ["totp", "recovery"], "token_header": "X-Stepgate-Token",
                          "prefix": "/.stepgate", "enrollment": "open", "factor_details": [
                              {"type": "totp", "enrol": "POST /.stepgate/factors/totp",
                               "confirm": "POST /.stepgate/factors/{id}/confirm",
                               "answer": {"code": "the 6-digit code the authenticator app shows"}},
                              {"type": "recovery", "enrol": "POST /.stepgate/recovery-codes",
                               "answer": {"code": "one of the recovery codes, each usable once"}}]}


async def test_management_needs_step_up_and_binds_to_the_change(env: Env) -> None:
    secret = await env.enrol("alice")
    factors = (await env.client.get(f"{P}/factors", auth=("alice", PW))).json()["factors"]
    fid = factors[0]["id"]
    r = await env.client.delete(f"{P}/factors/{fid}", auth=("alice", PW))
    assert r.status_code == 401
    ch = await env.client.post(f"{P}/challenges", auth=("alice", PW), json={"ticket": r.json()["ticket"]})
    tok = (await env.client.post(ch.json()["verify_uri"], auth=("alice", PW),
                                 json={"code": env.code(secret, 1)})).json()["token"]
    other = await env.client.post(f"{P}/recovery-codes", json={}, auth=("alice", PW),
                                  headers={"X-Stepgate-Token": tok})
    assert other.status_code == 401  # the token was for the DELETE, not this
    gone = await env.client.delete(f"{P}/factors/{fid}", auth=("alice", PW),
                                   headers={"X-Stepgate-Token": tok})
    assert gone.status_code == 204
    left = (await env.client.get(f"{P}/factors", auth=("alice", PW))).json()["factors"]
    assert [f["id"] for f in left] == ["recovery"]  # issued with the first factor, kept
    env.app.audit.flush()
    events = [json.loads(line)["event"] for line in env.audit.getvalue().splitlines()]
    assert "factor_removed" in events


async def test_unenrolled_deny_names_enrolment(env: Env) -> None:
    r = await env.client.post("/pay", json={}, auth=("alice", PW))
    assert r.status_code == 403
    assert r.json()["enroll_uri"] == "/.stepgate/factors"
    assert env.upstream == []


@respx.mock
async def test_httpx_forwarder_maps_errors() -> None:
    route = respx.get("http://up.test/x")
    route.side_effect = httpx.ConnectError("refused")
    fwd = HttpxForwarder("http://up.test")
    with pytest.raises(Exception) as err:
        await fwd.send("GET", "/x", [], None)
    assert getattr(err.value, "status", None) == 502
    route.side_effect = httpx.ReadTimeout("slow")
    with pytest.raises(Exception) as err:
        await fwd.send("GET", "/x", [], None)
    assert getattr(err.value, "status", None) == 504
    await fwd.aclose()


async def test_client_helper_with_async_client(env: Env) -> None:
    from gateway.client import StepgateAuth
    secret = await env.enrol("carol")
    asked: list[str] = []

    def code(factor: str, info: dict[str, Any]) -> str:
        asked.append(factor)
        return env.code(secret, 1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app),
                                 base_url="http://gw.test",
                                 auth=StepgateAuth(code, basic=("carol", PW))) as client:
        r = await client.post("/pay", json={"x": 1})
    assert r.status_code == 200 and asked == ["totp"]
    assert env.upstream[-1].headers["x-stepgate-user"] == "carol"
    assert "x-stepgate-token" not in env.upstream[-1].headers


async def test_enrollment_admin_closes_self_enrolment(env: Env) -> None:
    import dataclasses
    env.app.context.settings = dataclasses.replace(env.app.settings, enrollment="admin")
    r = await env.client.post(f"{P}/factors/totp", json={}, auth=("alice", PW))
    assert r.status_code == 403
    assert r.json()["type"] == "urn:stepgate:problem:enrollment-closed"


async def test_remembered_decisions_never_outlive_their_conditions(tmp_path: Any) -> None:
    """Decisions are cached by (method, raw path, Host) only up to the first rule
    with query/header/JSON conditions; everything after is decided afresh."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "a.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "open", "match": {"paths": ["/open/**"], "hosts": ["good.test"]},
         "action": "allow"}]}))
    (tmp_path / "policies" / "b.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "admin-query", "match": {"paths": ["/mixed"], "query": {"admin": "1"}},
         "action": "deny"},
        {"name": "mixed", "match": {"paths": ["/mixed"]}, "action": "allow"}]}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "upstream": {"url": "http://upstream.test"}, "policies": "policies/",
        "store": "sqlite:///s.db", "default_action": "deny"}))
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)
    app = create_app(load_settings(tmp_path / "c.yaml"),
                     forwarder=HttpxForwarder("http://upstream.test",
                                              transport=httpx.MockTransport(upstream)),
                     keys=KeyRing([generate_signing_key()], [generate_data_key()]),
                     audit=Audit("-", None, stream=io.StringIO()))
    await app.startup()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://good.test") as c:
        for _ in range(2):
            assert (await c.get("/open/x")).status_code == 200
            assert (await c.get("/open/x", headers={"host": "evil.test"})).status_code == 403
            assert (await c.get("/mixed")).status_code == 200
            assert (await c.get("/mixed?admin=1")).status_code == 403
            assert (await c.get("/open/%2e%2e/x")).status_code == 400
    assert list(app.decider.engine.decisions.data) == [("GET", b"/open/x", b"good.test")]
    assert len(seen) == 4
    await app.shutdown()


async def test_session_token_expires_even_when_remembered(env: Env) -> None:
    secret = await env.enrol("alice")
    ch = await env.challenge("alice", "GET", "/sess/a")
    tok = (await env.client.post(ch["verify_uri"], auth=("alice", PW),
                                 json={"code": env.code(secret, 1)})).json()["token"]
    h = {"X-Stepgate-Token": tok}
    for path in ("/sess/a", "/sess/a", "/sess/b"):
        assert (await env.client.get(path, auth=("alice", PW), headers=h)).status_code == 200
    other = await env.client.get("/sess/a", auth=("bob", PW), headers=h)
    assert other.status_code == 401  # remembered for alice, not for bob
    env.clock.t += 121
    late = await env.client.get("/sess/a", auth=("alice", PW), headers=h)
    assert late.status_code == 401 and late.json()["detail"] == "token is invalid or expired"


async def _session_token(env: Env, user: str, secret: str, path: str = "/sess/a") -> str:
    ch = await env.challenge(user, "GET", path)
    v = await env.client.post(ch["verify_uri"], auth=(user, PW), json={"code": env.code(secret, 1)})
    assert v.status_code == 200, v.text
    return str(v.json()["token"])


async def test_only_a_request_that_never_left_gives_its_use_back(env: Env) -> None:
    """uses.py: the connection could not be opened → released; a timeout or a dropped
    connection after sending → spent (it may have reached the upstream)."""
    secret = await env.enrol("alice")
    outcomes: list[Exception | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return httpx.Response(200, json={"ok": True})
    env.app.relay.forwarder = HttpxForwarder("http://upstream.test",
                                       transport=httpx.MockTransport(upstream))
    for n, (failure, status, reusable) in enumerate([
            (httpx.ConnectError("refused"), 502, True),
            (httpx.ConnectTimeout("slow connect"), 504, True),
            (httpx.ReadTimeout("slow answer"), 504, False),
            (httpx.RemoteProtocolError("dropped"), 502, False)]):
        env.clock.t += 60
        ch = await env.challenge("alice", "POST", "/pay", json={"n": n})
        tok = (await env.client.post(ch["verify_uri"], auth=("alice", PW),
                                     json={"code": env.code(secret)})).json()["token"]
        h = {"X-Stepgate-Token": tok}
        outcomes[:] = [failure, None]
        first = await env.client.post("/pay", json={"n": n}, auth=("alice", PW), headers=h)
        assert first.status_code == status, failure
        again = await env.client.post("/pay", json={"n": n}, auth=("alice", PW), headers=h)
        assert (again.status_code == 200) is reusable, (failure, again.text)
        if not reusable:
            assert again.status_code == 401 and again.json()["detail"] == "token already used"


async def test_a_session_token_needs_the_store_to_check_revocation(env: Env) -> None:
    secret = await env.enrol("alice")
    token = await _session_token(env, "alice", secret)
    h = {"X-Stepgate-Token": token}
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200

    async def broken(*a: Any, **k: Any) -> Any:
        raise StoreUnavailable("down")
    env.app.store.generation = broken  # type: ignore[method-assign]
    env.app.decider.forget_generation("alice")  # past the generation cache's second
    r = await env.client.get("/sess/b", auth=("alice", PW), headers=h)
    assert r.status_code == 503
    assert len(env.upstream) == 1


async def _manage(env: Env, user: str, secret: str, method: str, path: str) -> str:
    r = await env.client.request(method, f"{P}{path}", auth=(user, PW),
                                 json={} if method == "POST" else None)
    assert r.status_code == 401 and r.json()["rule"] == "stepgate:manage"
    ch = await env.client.post(f"{P}/challenges", auth=(user, PW), json={"ticket": r.json()["ticket"]})
    v = await env.client.post(ch.json()["verify_uri"], auth=(user, PW),
                              json={"code": env.code(secret)})
    return str(v.json()["token"])


async def test_deleting_a_factor_and_a_lockout_revoke_tokens(env: Env) -> None:
    secret = await env.enrol("alice")
    env.clock.t += 30
    manage = await _manage(env, "alice", secret, "POST", "/recovery-codes")
    rc = await env.client.post(f"{P}/recovery-codes", json={}, auth=("alice", PW),
                               headers={"X-Stepgate-Token": manage})
    assert rc.status_code == 201
    env.clock.t += 30
    h = {"X-Stepgate-Token": await _session_token(env, "alice", secret)}
    env.clock.t += 60
    # new recovery codes left tokens alone; removing a factor revokes them
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    manage = await _manage(env, "alice", secret, "DELETE", "/factors/recovery")
    gone = await env.client.delete(f"{P}/factors/recovery", auth=("alice", PW),
                                   headers={"X-Stepgate-Token": manage})
    assert gone.status_code == 204
    r = await env.client.get("/sess/a", auth=("alice", PW), headers=h)
    assert r.status_code == 401 and r.json()["detail"] == "token was revoked"
    # a fresh session token, then a lockout by wrong codes revokes it too
    env.clock.t += 30
    h = {"X-Stepgate-Token": await _session_token(env, "alice", secret)}
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    for _ in range(2):
        ch2 = await env.challenge("alice", "GET", "/sess/z")
        for _ in range(5):
            await env.client.post(ch2["verify_uri"], auth=("alice", PW), json={"code": "000000"})
    r = await env.client.get("/sess/a", auth=("alice", PW), headers=h)
    assert r.status_code == 401 and r.json()["detail"] == "token was revoked"


async def test_cached_decisions_still_audit_every_request_alike(env: Env) -> None:
    """A repeated allow and a repeated session-token use are decided from caches
    (decide.py): each request still gets its own audit line, identical to the first one
    but for the time."""
    secret = await env.enrol("alice")
    h = {"X-Stepgate-Token": await _session_token(env, "alice", secret)}
    env.app.audit.flush()
    env.audit.seek(0)
    env.audit.truncate()
    for _ in range(3):
        assert (await env.client.get("/open/x")).status_code == 200
        assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    env.app.audit.flush()
    lines = [json.loads(x) for x in env.audit.getvalue().splitlines()]
    ids = [event.pop("request_id") for event in lines]
    assert len(set(ids)) == 6  # each request its own id, cached decision or not
    for event in lines:
        event.pop("ts")
    assert lines == [{"event": "allowed", "rule": "open", "method": "GET", "path": "/open/x"},
                     {"event": "token_used", "user": "alice", "rule": "sess", "method": "GET",
                      "path": "/sess/a", "binding": "session"}] * 3
    sess = [r for r in env.upstream if r.url.path == "/sess/a"]
    assert [r.headers["x-stepgate-user"] for r in sess[-3:]] == ["alice"] * 3
    assert all("x-stepgate-user" not in r.headers for r in env.upstream if r.url.path == "/open/x")


async def test_revocation_by_another_process_reaches_a_cached_session_token(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica bumps the user's token generation in the shared store: this process
    refuses the token it has cached once GENERATION_TTL has passed, and not before."""
    import gateway.decision.decide as decide_module
    secret = await env.enrol("alice")
    h = {"X-Stepgate-Token": await _session_token(env, "alice", secret)}
    t = [1000.0]
    monkeypatch.setattr(decide_module.time, "monotonic", lambda: t[0])
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    await env.app.store.bump_generation("alice")  # as the other process would
    t[0] += decide_module.GENERATION_TTL / 2
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    t[0] += decide_module.GENERATION_TTL
    for _ in range(2):  # the second use meets a freshly read generation in the cache
        r = await env.client.get("/sess/a", auth=("alice", PW), headers=h)
        assert r.status_code == 401 and r.json()["detail"] == "token was revoked"


async def test_a_cached_session_token_is_bound_to_its_user_and_refused_once_expired(
        env: Env) -> None:
    secret = await env.enrol("alice")
    await env.enrol("bob")
    tok = await _session_token(env, "alice", secret)
    h = {"X-Stepgate-Token": tok}
    assert (await env.client.get("/sess/a", auth=("alice", PW), headers=h)).status_code == 200
    other = await env.client.get("/sess/a", auth=("bob", PW), headers=h)
    assert other.status_code == 401 and len(env.upstream) == 1
    env.clock.t += 121  # ttl 2m
    late = await env.client.get("/sess/a", auth=("alice", PW), headers=h)
    assert late.status_code == 401 and late.json()["detail"] == "token is invalid or expired"
    override = await env.client.get("/sess/a", auth=("alice", PW),
                                    headers={**h, "X-HTTP-Method-Override": "DELETE"})
    assert override.status_code == 400 and len(env.upstream) == 1
