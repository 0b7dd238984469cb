"""Traefik and Envoy have no package here: their endpoints are tested with the exact
requests those proxies send, header for header, taken from their source (Traefik v3.7
pkg/middlewares/auth/forward.go; Envoy's ext_authz HTTP client,
source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc and
check_request_utils.cc) and documented in docs/forward-auth.md.

Each row is one auth request for the client request ``POST /pay?x=1`` to ``api.example``
with a JSON body, first without a token (a 401 that carries a ticket), then — after the
handshake at the gateway's own endpoints — with the token (a 200 with the evidence), then
the same token again (spent: 401).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import PW, Env, send_raw

pytestmark = pytest.mark.anyio
P = "/.stepgate"
ALICE = "Basic " + base64.b64encode(f"alice:{PW}".encode()).decode()
BODY = b'{"a":1}'
Headers = list[tuple[str, str]]


@dataclass
class Replay:
    name: str
    method: str
    target: bytes
    headers: Callable[[str | None], Headers]  # token or None -> the headers as sent
    body: bytes
    chunks: int = 1
    body_seen: bool = True


def _token(token: str | None, name: str = "X-Stepgate-Token") -> Headers:
    return [(name, token)] if token else []


def traefik_forward_body(token: str | None) -> Headers:
    # forwardBody: true, preserveRequestMethod: true, trustForwardHeader: false (v3.7.9+):
    # Go writes Host, User-Agent and Content-Length first, then the copied client headers
    # and X-Forwarded-* sorted by name, then Accept-Encoding.
    return [("Host", "stepgate.auth.svc:8080"), ("User-Agent", "curl/8.5.0"),
            ("Content-Length", "7"), ("Accept", "*/*"), ("Authorization", ALICE),
            ("Content-Type", "application/json"), ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Host", "api.example"), ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Port", "80"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Uri", "/pay?x=1"), *_token(token), ("Accept-Encoding", "gzip")]


def traefik_chunked(token: str | None) -> Headers:
    # Traefik 3.3 to 3.7.8 attached the forwarded body after building the request: chunked.
    return [("Host", "stepgate.auth.svc:8080"), ("User-Agent", "curl/8.5.0"),
            ("Transfer-Encoding", "chunked"), ("Accept", "*/*"), ("Authorization", ALICE),
            ("Content-Type", "application/json"), ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Host", "api.example"), ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Port", "80"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Uri", "/pay?x=1"), *_token(token), ("Accept-Encoding", "gzip")]


def traefik_defaults(token: str | None) -> Headers:
    # No forwardBody, no preserveRequestMethod, trustForwardHeader unset (oldWriteHeader):
    # a body-less GET; X-Forwarded-Port/-Server and X-Real-Ip pass through from the
    # entrypoint.
    return [("Host", "stepgate.auth.svc:8080"), ("User-Agent", "curl/8.5.0"),
            ("Accept", "*/*"), ("Authorization", ALICE), ("Content-Type", "application/json"),
            ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Host", "api.example"),
            ("X-Forwarded-Method", "POST"), ("X-Forwarded-Port", "80"),
            ("X-Forwarded-Proto", "http"), ("X-Forwarded-Server", "traefik-7d9f"),
            ("X-Forwarded-Uri", "/pay?x=1"), ("X-Real-Ip", "203.0.113.7"), *_token(token),
            ("Accept-Encoding", "gzip")]


def traefik_preserve_no_body(token: str | None) -> Headers:
    # preserveRequestMethod without forwardBody: Go sends Content-Length: 0 for a POST.
    return [("Host", "stepgate.auth.svc:8080"), ("User-Agent", "curl/8.5.0"),
            ("Content-Length", "0"), ("Authorization", ALICE),
            ("Content-Type", "application/json"), ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Host", "api.example"), ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Proto", "https"), ("X-Forwarded-Uri", "/pay?x=1"), *_token(token),
            ("Accept-Encoding", "gzip")]


def envoy_with_body(token: str | None) -> Headers:
    # with_request_body, allowed_headers: x-stepgate-token, content-type, content-encoding.
    # The original method, path_prefix + path and query, the original :authority as Host,
    # content-length of the buffered body, x-envoy-auth-partial-body.
    return [("host", "api.example"), ("authorization", ALICE),
            ("content-type", "application/json"), *_token(token, "x-stepgate-token"),
            ("x-envoy-auth-partial-body", "false"), ("content-length", "7"),
            ("x-envoy-expected-rq-timeout-ms", "500")]


def envoy_without_body(token: str | None) -> Headers:
    # No with_request_body: Envoy still writes content-length: 0 and no partial-body field.
    return [("host", "api.example"), ("authorization", ALICE),
            *_token(token, "x-stepgate-token"), ("content-length", "0"),
            ("x-envoy-expected-rq-timeout-ms", "500")]


REPLAYS = [
    Replay("traefik forwardBody", "POST", f"{P}/auth/traefik".encode(), traefik_forward_body,
           BODY),
    Replay("traefik forwardBody chunked", "POST", f"{P}/auth/traefik".encode(),
           traefik_chunked, BODY, chunks=3),
    Replay("traefik defaults", "GET", f"{P}/auth/traefik".encode(), traefik_defaults, b"",
           body_seen=False),
    Replay("traefik preserveRequestMethod", "POST", f"{P}/auth/traefik".encode(),
           traefik_preserve_no_body, b"", body_seen=False),
    Replay("envoy with_request_body", "POST", f"{P}/auth/envoy/pay?x=1".encode(),
           envoy_with_body, BODY),
    Replay("envoy without body", "POST", f"{P}/auth/envoy/pay?x=1".encode(),
           envoy_without_body, b"", body_seen=False),
]


@pytest.mark.parametrize("replay", REPLAYS, ids=lambda r: r.name)
async def test_replayed_handshake(env: Env, replay: Replay) -> None:
    secret = await env.enrol()
    ask = lambda token: send_raw(env.app, replay.method, replay.target,  # noqa: E731
                                 replay.headers(token), replay.body, replay.chunks)
    first = await ask(None)
    assert first.status == 401, first.body
    doc = first.json()
    assert doc["rule"] == "pay" and doc["binding"] == "request"
    assert any(v.startswith("SecondFactor ") for v in first.header("www-authenticate"))
    token = await env.token(doc["ticket"], secret)
    ok = await ask(token)
    assert ok.status == 200, ok.body
    assert [ok.header(h) for h in ("x-stepgate-user", "x-stepgate-rule", "x-stepgate-factor")] \
        == [["alice"], ["pay"], ["totp"]]
    assert len(ok.header("x-stepgate-verified-at")) == 1
    spent = await ask(token)
    assert spent.status == 401 and spent.json()["detail"] == "token already used"
    # A body the gateway saw is bound: the same token does not fit another body.
    ticket = (await ask(None)).json()["ticket"]
    other = await env.token(ticket, secret)
    if replay.body_seen:
        changed = await send_raw(env.app, replay.method, replay.target, replay.headers(other),
                                 b'{"a":2}', replay.chunks)
        assert changed.status == 401
        assert changed.json()["detail"] == "token is bound to another request"
    assert env.upstream == []


async def test_replays_reach_the_same_decision_as_reverse_proxy_mode(env: Env) -> None:
    """Denied and allowed routes, through each replayed convention."""
    def with_target(headers: Headers, uri: str) -> Headers:
        return [(k, uri if k == "X-Forwarded-Uri" else v) for k, v in headers]
    for uri, status in (("/admin/x", 403), ("/open/x?q=1", 200), ("/open/../admin", 400)):
        t = await send_raw(env.app, "GET", f"{P}/auth/traefik".encode(),
                           with_target(traefik_defaults(None), uri))
        e = await send_raw(env.app, "GET", f"{P}/auth/envoy{uri}".encode(),
                           envoy_without_body(None))
        assert (t.status, e.status) == (status, status), uri


async def test_envoy_partial_body_replay_is_refused(env: Env) -> None:
    await env.enrol()
    headers = [(k, "true" if k == "x-envoy-auth-partial-body" else v)
               for k, v in envoy_with_body(None)]
    r = await send_raw(env.app, "POST", f"{P}/auth/envoy/pay?x=1".encode(), headers, BODY)
    assert r.status == 403 and r.json()["type"] == "urn:stepgate:problem:body-not-seen"


async def test_an_untrusted_peer_replaying_traefik_is_refused(tmp_path: Path) -> None:
    from .conftest import make_env
    env, app = await make_env(tmp_path, forward_auth={"trusted_proxies": ["10.1.0.0/16"]})
    try:
        await env.enrol()
        ok = await send_raw(app, "GET", f"{P}/auth/traefik".encode(), traefik_defaults(None),
                            peer="10.1.2.3")
        assert ok.status == 401
        # An IPv4 client on a dual-stack listener is reported as ::ffff:a.b.c.d.
        mapped = await send_raw(app, "GET", f"{P}/auth/traefik".encode(),
                                traefik_defaults(None), peer="::ffff:10.1.2.3")
        assert mapped.status == 401
        no = await send_raw(app, "GET", f"{P}/auth/traefik".encode(), traefik_defaults(None),
                            peer="10.2.0.1")
        assert no.status == 403
        assert no.json()["type"] == "urn:stepgate:problem:forward-auth-refused"
    finally:
        await env.client.aclose()
        await app.shutdown()
