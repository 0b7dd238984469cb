"""The forward-auth endpoints in-process: one decision, four header conventions, and the
refusals that keep an ingress from being talked into a 200."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.keys import AdminKeyError
from gateway.store import StoreUnavailable

from .conftest import PW, Env, make_env, send_raw

pytestmark = pytest.mark.anyio
P = "/.stepgate"
EVIDENCE = ("x-stepgate-user", "x-stepgate-rule", "x-stepgate-factor", "x-stepgate-verified-at")
ALICE = "Basic " + base64.b64encode(f"alice:{PW}".encode()).decode()

Ask = Callable[..., Any]


def nginx(method: str, uri: str, headers: dict[str, str] | None = None,
          host: str = "api.test") -> dict[str, Any]:
    """What nginx's documented auth_request location sends: a body-less GET carrying the
    original method and $request_uri, the client's headers and Host $http_host."""
    return {"method": "GET", "url": f"{P}/auth/nginx",
            "headers": {"Host": host, "X-Original-Method": method, "X-Original-URI": uri,
                        **(headers or {})}}


def caddy(method: str, uri: str, headers: dict[str, str] | None = None,
          host: str = "api.test") -> dict[str, Any]:
    """What Caddy's forward_auth sends: GET to the uri with the original query kept, the
    client's headers and Host, and the X-Forwarded-* fields."""
    query = uri.partition("?")[2]
    return {"method": "GET", "url": f"{P}/auth/caddy" + (f"?{query}" if query else ""),
            "headers": {"Host": host, "X-Forwarded-Method": method, "X-Forwarded-Uri": uri,
                        "X-Forwarded-Host": host, "X-Forwarded-Proto": "http",
                        "X-Forwarded-For": "203.0.113.9", **(headers or {})}}


def traefik(method: str, uri: str, headers: dict[str, str] | None = None,
            host: str = "api.test", body: bytes | None = None,
            preserve: bool = False) -> dict[str, Any]:
    """What Traefik's ForwardAuth sends: GET (the original method with preserveRequestMethod)
    to the address, the client's headers, X-Forwarded-*, and the body with forwardBody."""
    out: dict[str, Any] = {
        "method": method if preserve else "GET", "url": f"{P}/auth/traefik",
        "headers": {"Host": "stepgate:8080", "X-Forwarded-Method": method,
                    "X-Forwarded-Uri": uri, "X-Forwarded-Host": host,
                    "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9",
                    **(headers or {})}}
    if body is not None:
        out["content"] = body
    return out


def envoy(method: str, uri: str, headers: dict[str, str] | None = None,
          host: str = "api.test", body: bytes | None = None) -> dict[str, Any]:
    """What Envoy's ext_authz HTTP service sends: the original method to path_prefix +
    original path and query, the allowed headers, and with with_request_body the body and
    x-envoy-auth-partial-body."""
    out: dict[str, Any] = {"method": method, "url": f"{P}/auth/envoy{uri}",
                           "headers": {"Host": host, **(headers or {})}}
    if body is not None:
        out["content"] = body
        out["headers"]["x-envoy-auth-partial-body"] = "false"
    return out


CONVENTIONS = {"nginx": nginx, "caddy": caddy, "traefik": traefik, "envoy": envoy}


async def ask(env: Env, req: dict[str, Any]) -> httpx.Response:
    return await env.client.request(**req)


@pytest.fixture(params=sorted(CONVENTIONS))
def conv(request: pytest.FixtureRequest) -> Ask:
    return CONVENTIONS[request.param]


async def test_allowed_route_answers_200_with_all_four_evidence_headers_empty(
        env: Env, conv: Ask) -> None:
    r = await ask(env, conv("GET", "/open/x?a=1"))
    assert r.status_code == 200, r.text
    assert [r.headers.get(h) for h in EVIDENCE] == ["", "", "", ""]
    assert r.content == b""
    assert env.upstream == []


async def test_denied_route_answers_403(env: Env, conv: Ask) -> None:
    r = await ask(env, conv("GET", "/admin/x", {"Authorization": ALICE}))
    assert r.status_code == 403
    assert r.json()["type"] == "urn:stepgate:problem:forbidden"
    assert env.upstream == []


async def test_protected_route_answers_the_reverse_proxy_modes_401(env: Env, conv: Ask) -> None:
    await env.enrol()
    r = await ask(env, conv("GET", "/sess/x", {"Authorization": ALICE}))
    assert r.status_code == 401
    doc = r.json()
    assert doc["type"] == "urn:stepgate:problem:second-factor-required"
    assert doc["rule"] == "sess" and doc["challenge_uri"] == f"{P}/challenges"
    challenge = r.headers.get_list("www-authenticate")
    assert len(challenge) == 1 and challenge[0].startswith('SecondFactor realm="unit", rule="sess"')
    assert f'ticket="{doc["ticket"]}"' in challenge[0]
    # Reverse-proxy mode answers the same request the same way.
    direct = await env.client.get("/sess/x", headers={"Authorization": ALICE})
    assert direct.status_code == 401
    assert {k: v for k, v in direct.json().items() if k not in ("ticket", "request_id")} == \
        {k: v for k, v in doc.items() if k not in ("ticket", "request_id")}
    assert env.upstream == []


async def test_nginx_gets_the_second_factor_challenge_first(env: Env) -> None:
    """nginx relays only the first WWW-Authenticate field of an auth 401."""
    r = await ask(env, nginx("GET", "/sess/x"))  # nobody identified: Basic and SecondFactor
    fields = r.headers.get_list("www-authenticate")
    assert r.status_code == 401 and len(fields) == 2
    assert fields[0].startswith("SecondFactor ") and fields[1].startswith("Basic ")
    c = await ask(env, caddy("GET", "/sess/x"))  # the others keep reverse-proxy mode's order
    assert [f.split()[0] for f in c.headers.get_list("www-authenticate")] == \
        ["Basic", "SecondFactor"]


async def test_full_handshake_then_200_with_evidence(env: Env, conv: Ask) -> None:
    secret = await env.enrol()
    first = await ask(env, conv("GET", "/sess/a", {"Authorization": ALICE}))
    assert first.status_code == 401
    token = await env.token(first.json()["ticket"], secret)
    for path in ("/sess/a", "/sess/b?x=1"):  # a session token: any route of the rule
        r = await ask(env, conv("GET", path, {"Authorization": ALICE,
                                              "X-Stepgate-Token": token}))
        assert r.status_code == 200, r.text
        assert r.headers["x-stepgate-user"] == "alice"
        assert r.headers["x-stepgate-rule"] == "sess"
        assert r.headers["x-stepgate-factor"] == "totp"
        assert r.headers["x-stepgate-verified-at"].endswith("Z")
    assert env.upstream == []


async def test_single_use_token_is_spent_at_decision_time(env: Env, conv: Ask) -> None:
    secret = await env.enrol()
    first = await ask(env, conv("GET", "/once/x", {"Authorization": ALICE}))
    token = await env.token(first.json()["ticket"], secret)
    headers = {"Authorization": ALICE, "X-Stepgate-Token": token}
    assert (await ask(env, conv("GET", "/once/x", headers))).status_code == 200
    again = await ask(env, conv("GET", "/once/x", headers))
    assert again.status_code == 401
    assert again.json()["detail"] == "token already used"


async def test_request_binding_without_the_body_covers_method_host_path_and_query(
        env: Env) -> None:
    secret = await env.enrol()
    first = await ask(env, nginx("POST", "/pay?to=bob", {"Authorization": ALICE}))
    assert first.status_code == 401 and first.json()["binding"] == "request"
    token = await env.token(first.json()["ticket"], secret)
    headers = {"Authorization": ALICE, "X-Stepgate-Token": token}
    # Another query, path or host: refused, and the token is not spent by the refusal.
    for uri, host in (("/pay?to=mallory", "api.test"), ("/pay", "api.test"),
                      ("/pay?to=bob", "other.test")):
        r = await ask(env, nginx("POST", uri, headers, host=host))
        assert r.status_code == 401, (uri, host)
        assert r.json()["detail"] == "token is bound to another request"
    # Reverse-proxy mode sees the body: a token bound without one does not fit there,
    # even for an empty body.
    direct = await env.client.post("/pay?to=bob", headers=headers, content=b"")
    assert direct.status_code == 401
    assert (await ask(env, nginx("POST", "/pay?to=bob", headers))).status_code == 200
    assert env.upstream == []


async def test_a_token_bound_to_a_seen_body_is_not_accepted_where_the_body_is_unseen(
        env: Env) -> None:
    secret = await env.enrol()
    first = await env.client.post("/pay", headers={"Authorization": ALICE}, content=b"")
    token = await env.token(first.json()["ticket"], secret)
    r = await ask(env, nginx("POST", "/pay", {"Authorization": ALICE, "X-Stepgate-Token": token}))
    assert r.status_code == 401


async def test_body_required_rule_is_refused_where_no_body_is_sent(env: Env) -> None:
    await env.enrol()
    for conv in (nginx, caddy, traefik):
        r = await ask(env, conv("POST", "/strict", {"Authorization": ALICE}))
        assert r.status_code == 403, conv
        doc = r.json()
        assert doc["type"] == "urn:stepgate:problem:body-not-seen"
        assert "require.body: required" in doc["detail"] and "strict" in doc["detail"]
    # With the body (Traefik forwardBody, Envoy with_request_body) the rule is decided.
    for req in (traefik("POST", "/strict", {"Authorization": ALICE,
                                            "Content-Type": "application/json"}, body=b"{}"),
                envoy("POST", "/strict", {"Authorization": ALICE,
                                          "Content-Type": "application/json"}, body=b"{}")):
        assert (await ask(env, req)).status_code == 401
    assert '"reason":"body not seen"' in env.audit_lines()


async def test_a_rule_that_reads_the_body_is_refused_where_no_body_is_sent(env: Env) -> None:
    await env.enrol()
    r = await ask(env, caddy("POST", "/big", {"Authorization": ALICE,
                                              "Content-Type": "application/json"}))
    assert r.status_code == 403
    assert r.json()["type"] == "urn:stepgate:problem:body-not-seen"
    big = traefik("POST", "/big", {"Authorization": ALICE, "Content-Type": "application/json"},
                  body=json.dumps({"amount": 5000}).encode(), preserve=True)
    assert (await ask(env, big)).status_code == 401
    small = envoy("POST", "/big", {"Authorization": ALICE, "Content-Type": "application/json"},
                  body=json.dumps({"amount": 5}).encode())
    assert (await ask(env, small)).status_code == 200  # 'big' does not match; 'rest' allows


async def test_a_token_bound_to_the_forwarded_body_fits_only_that_body(env: Env) -> None:
    secret = await env.enrol()
    h = {"Authorization": ALICE, "Content-Type": "application/json"}
    first = await ask(env, traefik("POST", "/pay", h, body=b'{"to":"bob"}', preserve=True))
    assert first.status_code == 401
    token = await env.token(first.json()["ticket"], secret)
    h["X-Stepgate-Token"] = token
    other = await ask(env, traefik("POST", "/pay", h, body=b'{"to":"eve"}', preserve=True))
    assert other.status_code == 401
    # The same bytes in reverse-proxy mode: the same binding.
    direct = await env.client.post("/pay", headers={**h, "Host": "api.test"},
                                   content=b'{"to":"bob"}')
    assert direct.status_code == 200 and len(env.upstream) == 1


async def test_envoy_partial_body_is_refused(env: Env) -> None:
    req = envoy("POST", "/pay", {"Authorization": ALICE}, body=b'{"to":')
    req["headers"]["x-envoy-auth-partial-body"] = "true"
    r = await ask(env, req)
    assert r.status_code == 403
    assert "x-envoy-auth-partial-body" in r.json()["detail"]


async def test_envoy_reads_method_path_and_query_from_the_auth_request(env: Env) -> None:
    assert (await ask(env, envoy("GET", "/admin/x"))).status_code == 403
    assert (await ask(env, envoy("GET", "/open/x?y=/admin"))).status_code == 200
    r = await env.client.get(f"{P}/auth/envoy")  # no original path at all: not an endpoint
    assert r.status_code == 404


PATH_TRICKS = [
    "//admin/x", "/open//x", "/open/./x", "/open/../admin/x", "/open/%2e%2e/admin/x",
    "/open/%2E%2E/admin/x", "/open/%2e./admin/x", "/open/%252e%252e/admin/x",
    "/open%2fadmin", "/open/%2F../admin", "/open/%5c../admin", "/open\\..\\admin",
    "/open/%00/x", "/admin;jsessionid=1/x", "/open/x;/../../admin", "/open/%3b/admin",
    "/open/%zz", "/open/x#/../../admin", "/open/%ef%bc%8e%ef%bc%8e/admin/x",
    "/%EF%BD%81dmin/x",
]


@pytest.mark.parametrize("trick", PATH_TRICKS)
async def test_a_path_trick_is_never_a_200(env: Env, conv: Ask, trick: str) -> None:
    if conv is envoy:  # past httpx, which would resolve dot segments
        status = (await send_raw(env.app, "GET", f"{P}/auth/envoy{trick}".encode("latin-1"),
                                 [("host", "api.test")])).status
    else:
        status = (await ask(env, conv("GET", trick))).status_code
    assert status in (400, 403), (trick, status)


@pytest.mark.parametrize("uri", ["", "admin/x", "http://api.test/admin/x", "*",
                                 "/open/x y", "/open/\x7f", "/open/é"])
async def test_a_target_that_is_not_origin_form_is_refused(env: Env, uri: str) -> None:
    req = nginx("GET", "/open/x")
    req["headers"]["X-Original-URI"] = uri.encode("utf-8")
    r = await ask(env, req)
    assert r.status_code == 400, uri


async def test_the_gateways_own_endpoints_are_not_decided_for_an_ingress(env: Env,
                                                                        conv: Ask) -> None:
    r = await ask(env, conv("POST", f"{P}/challenges"))
    assert r.status_code == 403
    assert "route /.stepgate/ to the gateway" in r.json()["detail"]


@pytest.mark.parametrize("name,make", [
    ("X-Original-URI", lambda: nginx("GET", "/open/x")),
    ("X-Original-Method", lambda: nginx("GET", "/open/x")),
    ("X-Forwarded-Uri", lambda: caddy("GET", "/open/x")),
    ("X-Forwarded-Host", lambda: caddy("GET", "/open/x")),
    ("X-Forwarded-Method", lambda: traefik("GET", "/open/x")),
    ("X-Forwarded-Proto", lambda: traefik("GET", "/open/x")),
])
async def test_duplicate_or_underscore_copies_of_the_carrying_headers_are_refused(
        env: Env, name: str, make: Callable[[], dict[str, Any]]) -> None:
    req = make()
    value = req["headers"][name]
    dup = dict(req, headers=[*req["headers"].items(), (name, "/admin/x")])
    r = await ask(env, dup)
    assert r.status_code == 400 and "more than once" in r.json()["detail"], name
    under = dict(req, headers=[*req["headers"].items(), (name.replace("-", "_"), value)])
    r = await ask(env, under)
    assert r.status_code == 400 and "'_' spelling" in r.json()["detail"], name
    missing = dict(req, headers={k: v for k, v in req["headers"].items() if k != name})
    r = await ask(env, missing)
    assert r.status_code == 400 and name.lower() in r.json()["detail"].lower(), name


@pytest.mark.parametrize("name", ["X_Stepgate_Token", "X_Stepgate_User", "x_stepgate_rule",
                                  "X_Stepgate_Auth_Secret"])
async def test_underscore_copies_of_the_gateways_headers_are_refused(env: Env, conv: Ask,
                                                                    name: str) -> None:
    r = await ask(env, conv("GET", "/open/x", {name: "alice"}))
    assert r.status_code == 400, name


async def test_each_endpoint_reads_only_its_own_convention(env: Env) -> None:
    """No fall back: the nginx endpoint ignores X-Forwarded-*, Caddy's ignores X-Original-*."""
    n = nginx("GET", "/admin/x")
    n["headers"].update({"X-Forwarded-Uri": "/open/x", "X-Forwarded-Method": "GET"})
    assert (await ask(env, n)).status_code == 403
    del n["headers"]["X-Original-URI"]
    assert (await ask(env, n)).status_code == 400
    c = caddy("GET", "/admin/x")
    c["headers"].update({"X-Original-URI": "/open/x", "X-Original-Method": "GET"})
    assert (await ask(env, c)).status_code == 403
    e = envoy("GET", "/admin/x")
    e["headers"].update({"X-Original-URI": "/open/x", "X-Forwarded-Uri": "/open/x"})
    assert (await ask(env, e)).status_code == 403


async def test_caddy_and_traefik_take_the_host_from_x_forwarded_host(tmp_path: Path) -> None:
    rules = {"rules": [
        {"name": "internal", "match": {"hosts": ["internal.test"]}, "action": "deny"},
        {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"}]}
    env, app = await make_env(tmp_path, rules=rules)
    try:
        for conv in (caddy, traefik):
            r = await ask(env, conv("GET", "/x", host="internal.test"))
            assert r.status_code == 403, conv
            spoof = conv("GET", "/x", host="api.test")
            spoof["headers"]["Host"] = "internal.test"  # the auth request's own Host
            assert (await ask(env, spoof)).status_code == 200
        assert (await ask(env, nginx("GET", "/x", host="internal.test"))).status_code == 403
        assert (await ask(env, envoy("GET", "/x", host="internal.test"))).status_code == 403
        bad = caddy("GET", "/x")
        bad["headers"]["X-Forwarded-Proto"] = "gopher"
        assert (await ask(env, bad)).status_code == 400
    finally:
        await env.client.aclose()
        await app.shutdown()


async def test_traefik_auth_method_is_get_or_the_original(env: Env) -> None:
    ok = traefik("DELETE", "/open/x", preserve=True)
    assert (await ask(env, ok)).status_code == 200
    odd = traefik("DELETE", "/open/x")
    odd["method"] = "PUT"
    r = await ask(env, odd)
    assert r.status_code == 400 and "X-Forwarded-Method" in r.json()["detail"]


async def test_ambiguous_original_requests_are_refused(env: Env, conv: Ask) -> None:
    two_tokens = conv("GET", "/sess/x", {"Authorization": ALICE})
    two_tokens["headers"] = [*two_tokens["headers"].items(), ("X-Stepgate-Token", "a"),
                             ("X-Stepgate-Token", "b")]
    assert (await ask(env, two_tokens)).status_code == 400
    override = conv("POST", "/sess/x", {"Authorization": ALICE, "X-HTTP-Method-Override": "GET"})
    assert (await ask(env, override)).status_code == 400
    bad_method = conv("GE T", "/open/x")
    if conv is not envoy:
        assert (await ask(env, bad_method)).status_code == 400


# ---------------------------------------------------------------------- who may ask

async def test_untrusted_peer_gets_403_and_is_audited(tmp_path: Path, conv: Ask) -> None:
    env, app = await make_env(tmp_path, forward_auth={"trusted_proxies": ["10.0.0.0/8"]})
    try:
        r = await ask(env, conv("GET", "/open/x"))
        assert r.status_code == 403
        assert r.json()["type"] == "urn:stepgate:problem:forward-auth-refused"
        line = json.loads(env.audit_lines().splitlines()[-1])
        assert line["event"] == "forward_auth_refused" and line["peer"] == "127.0.0.1"
    finally:
        await env.client.aclose()
        await app.shutdown()


async def test_endpoints_are_off_by_default(tmp_path: Path) -> None:
    env, app = await make_env(tmp_path, forward_auth={})
    try:
        r = await ask(env, nginx("GET", "/open/x"))
        assert r.status_code == 403 and "forward_auth.trusted_proxies" in r.json()["detail"]
        # Reverse-proxy mode is unaffected.
        assert (await env.client.get("/open/x")).status_code == 200
    finally:
        await env.client.aclose()
        await app.shutdown()


async def test_shared_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-for-the-ingress-0123456789"
    monkeypatch.setenv("FA_SECRET", secret)
    env, app = await make_env(tmp_path, forward_auth={"trusted_proxies": ["127.0.0.0/8"],
                                                      "secret_env": "FA_SECRET"})
    try:
        req = nginx("GET", "/open/x")
        assert (await ask(env, req)).status_code == 403
        req["headers"]["X-Stepgate-Auth-Secret"] = secret[:-1] + "x"
        assert (await ask(env, req)).status_code == 403
        req["headers"]["X-Stepgate-Auth-Secret"] = secret
        assert (await ask(env, req)).status_code == 200
        twice = dict(req, headers=[*req["headers"].items(), ("X-Stepgate-Auth-Secret", secret)])
        assert (await ask(env, twice)).status_code == 403
        assert secret not in env.audit_lines()
    finally:
        await env.client.aclose()
        await app.shutdown()


async def test_a_named_secret_variable_that_is_unset_stops_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FA_SECRET", raising=False)
    with pytest.raises(AdminKeyError, match="forward_auth.secret_env.*FA_SECRET"):
        await make_env(tmp_path, forward_auth={"trusted_proxies": ["127.0.0.1/32"],
                                               "secret_env": "FA_SECRET"})


async def test_store_failure_is_a_503_never_a_200(env: Env, conv: Ask,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    secret = await env.enrol()
    first = await ask(env, conv("GET", "/once/x", {"Authorization": ALICE}))
    token = await env.token(first.json()["ticket"], secret)

    async def down(*args: object) -> None:
        raise StoreUnavailable("down")
    monkeypatch.setattr(env.app.store, "reserve_use", down)
    r = await ask(env, conv("GET", "/once/x", {"Authorization": ALICE,
                                                "X-Stepgate-Token": token}))
    assert r.status_code == 503


def scope_of(req: dict[str, Any], peer: str = "127.0.0.1") -> dict[str, Any]:
    """The ASGI scope the server builds for one of the asks above."""
    url = httpx.URL("http://gw.test" + req["url"])
    return {"type": "http", "method": req["method"], "raw_path": url.raw_path.partition(b"?")[0],
            "query_string": url.query, "client": (peer, 5000),
            "headers": [(k.lower().encode(), v.encode()) for k, v in req["headers"].items()]}


async def test_quick_answers_only_what_is_known_without_waiting(env: Env) -> None:
    """The server writes these answers itself (no ASGI cycle): only a remembered allow or a
    session token already checked, never a refusal or anything that needs the store."""
    allowed = scope_of(nginx("GET", "/open/x"))
    assert env.app.quick(allowed) is None  # not decided yet
    assert (await ask(env, nginx("GET", "/open/x"))).status_code == 200
    raw = env.app.quick(allowed)
    assert raw is not None and raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"x-stepgate-user: \r\nx-stepgate-rule: \r\nx-stepgate-factor: \r\n"
                        b"x-stepgate-verified-at: \r\ncontent-length: 0\r\n")
    assert env.app.quick(scope_of(nginx("GET", "/open/x"), peer="10.0.0.1")) is None
    assert env.app.quick(scope_of(nginx("GET", "/admin/x"))) is None
    assert env.app.quick(scope_of(traefik("GET", "/open/x"))) is None  # may carry a body
    two = scope_of(nginx("GET", "/open/x"))
    two["headers"].append((b"x-original-uri", b"/admin/x"))
    assert env.app.quick(two) is None  # the ASGI path answers the 400
    # A session token checked once is then answered quickly, with its evidence.
    secret = await env.enrol()
    first = await ask(env, nginx("GET", "/sess/a", {"Authorization": ALICE}))
    token = await env.token(first.json()["ticket"], secret)
    sess = nginx("GET", "/sess/a", {"Authorization": ALICE, "X-Stepgate-Token": token})
    assert env.app.quick(scope_of(sess)) is None
    assert (await ask(env, sess)).status_code == 200
    raw = env.app.quick(scope_of(sess))
    assert raw is not None and b"x-stepgate-user: alice\r\n" in raw
    forged = nginx("GET", "/sess/a", {"Authorization": ALICE, "X-Stepgate-Token": token + "x"})
    assert env.app.quick(scope_of(forged)) is None
