"""In-process gateways for the forward-auth endpoints: httpx.ASGITransport (the peer is
127.0.0.1), a MockTransport upstream that must never be called, a frozen clock."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from gateway.audit import Audit
from gateway.config.load import load_settings
from gateway.http.app import Gateway, create_app
from gateway.keys import KeyRing, generate_data_key, generate_signing_key
from gateway.proxy import HttpxForwarder

from ..totp_ref import hotp

P = "/.stepgate"
PW = "pw"
RULES = {"rules": [
    {"name": "open", "match": {"paths": ["/open/**"]}, "action": "allow"},
    {"name": "admin", "match": {"paths": ["/admin/**"]}, "action": "deny"},
    {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
     "require": {"factors": ["totp", "recovery"], "binding": "request"}},
    {"name": "strict", "match": {"methods": ["POST"], "paths": ["/strict"]},
     "require": {"factors": ["totp"], "binding": "request", "body": "required"}},
    {"name": "once", "match": {"paths": ["/once/**"]},
     "require": {"factors": ["totp"], "binding": "route", "uses": 1}},
    {"name": "sess", "match": {"paths": ["/sess/**"]},
     "require": {"factors": ["totp"], "binding": "session", "ttl": "5m"}},
    # Rules after one that reads the body are never remembered (decided per request).
    {"name": "big", "match": {"methods": ["POST"], "paths": ["/big"],
                              "json": {"$.amount": {"gt": 1000}}},
     "require": {"factors": ["totp"], "binding": "request"}},
    {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"},
]}


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Env:
    def __init__(self, app: Gateway, client: httpx.AsyncClient, clock: Clock,
                 audit: io.StringIO, upstream: list[httpx.Request]) -> None:
        self.app, self.client, self.clock, self.audit = app, client, clock, audit
        self.upstream = upstream

    def audit_lines(self) -> str:
        self.app.audit.flush()
        return self.audit.getvalue()

    async def enrol(self, user: str = "alice") -> str:
        r = await self.client.post(f"{P}/factors/totp", json={}, auth=(user, PW))
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        ok = await self.client.post(f"{P}/factors/{r.json()['id']}/confirm", auth=(user, PW),
                                    json={"code": self.code(secret)})
        assert ok.status_code == 200, ok.text
        return str(secret)

    def code(self, secret: str, offset: int = 0) -> str:
        return hotp(secret, int(self.clock() // 30) + offset)

    async def token(self, ticket: str, secret: str, user: str = "alice") -> str:
        """A token for a ticket, by the handshake at the gateway's own endpoints."""
        ch = await self.client.post(f"{P}/challenges", auth=(user, PW),
                                    json={"ticket": ticket, "factor": "totp"})
        assert ch.status_code == 201, ch.text
        self.clock.t += 30  # a fresh time step: the enrolment's code is spent
        ok = await self.client.post(ch.json()["verify_uri"], auth=(user, PW),
                                    json={"code": self.code(secret)})
        assert ok.status_code == 200, ok.text
        return str(ok.json()["token"])


class Answer:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> list[str]:
        return [v.decode() for k, v in self.headers if k.decode().lower() == name.lower()]

    def json(self) -> Any:
        import json
        return json.loads(self.body)


async def send_raw(app: Gateway, method: str, target: bytes, headers: list[tuple[str, str]],
                   body: bytes = b"", chunks: int = 1, peer: str = "127.0.0.1") -> Answer:
    """One request exactly as written — header names, order and repeats kept, no header
    added — handed to the gateway as its server would (an ASGI scope)."""
    path, _, query = target.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path.decode("latin-1"),
             "raw_path": path, "query_string": query,
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
             "client": (peer, 40000), "server": ("127.0.0.1", 8080)}
    size = max(1, -(-len(body) // chunks))
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
    await app(scope, receive, send)
    return Answer(sent[0]["status"], list(sent[0]["headers"]),
                  b"".join(m.get("body", b"") for m in sent[1:]))


async def make_env(tmp_path: Path, **config: Any) -> tuple[Env, Gateway]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "r.yaml").write_text(yaml.safe_dump(config.pop("rules", RULES)))
    salt = bcrypt.gensalt(rounds=4)
    (tmp_path / "users").write_text("".join(
        f"{u}:{bcrypt.hashpw(PW.encode(), salt).decode()}\n" for u in ("alice", "bob")))
    doc: dict[str, Any] = {
        "upstream": {"url": "http://upstream.test"}, "policies": "policies/",
        "store": "sqlite:///s.db", "identity": {"basic": {"htpasswd": "users"}},
        "realm": "unit", "forward_auth": {"trusted_proxies": ["127.0.0.1/32"]}}
    doc.update(config)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)
    clock = Clock()
    out = io.StringIO()
    app = create_app(load_settings(tmp_path / "c.yaml"),
                     forwarder=HttpxForwarder("http://upstream.test",
                                              transport=httpx.MockTransport(upstream)),
                     keys=KeyRing([generate_signing_key()], [generate_data_key()]), clock=clock,
                     audit=Audit("-", None, clock, stream=out))
    await app.startup()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test")
    return Env(app, client, clock, out, seen), app


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e, app = await make_env(tmp_path)
    try:
        yield e
    finally:
        await e.client.aclose()
        await app.shutdown()
