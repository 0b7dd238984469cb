"""In-process gateways for the endpoint tests: httpx.ASGITransport, a MockTransport
upstream, a frozen clock."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
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

PW = "pw"
ADMIN_KEY = "admin-key-for-unit-tests-0123456789"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


MakeApp = Callable[..., AbstractAsyncContextManager[tuple[Gateway, httpx.AsyncClient]]]


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeApp:
    """``async with make_app(rules=..., **config) as (app, client)``: a started gateway."""
    monkeypatch.setenv("STEPGATE_ADMIN_KEY", ADMIN_KEY)

    @asynccontextmanager
    async def make(rules: list[dict[str, Any]] | None = None,
                   **config: Any) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
        d = tmp_path / f"gw{len(list(tmp_path.iterdir()))}"
        (d / "policies").mkdir(parents=True)
        (d / "policies" / "r.yaml").write_text(yaml.safe_dump({"rules": rules or [
            {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
             "require": {"factors": ["totp", "recovery"], "binding": "request"}}]}))
        salt = bcrypt.gensalt(rounds=4)
        (d / "users").write_text("".join(
            f"{u}:{bcrypt.hashpw(PW.encode(), salt).decode()}\n" for u in ("alice", "bob")))
        doc = {"upstream": {"url": "http://upstream.test"}, "policies": "policies/",
               "store": "sqlite:///s.db", "identity": {"basic": {"htpasswd": "users"}},
               "realm": "unit", "admin": {"key_env": "STEPGATE_ADMIN_KEY"}}
        doc.update(config)
        (d / "c.yaml").write_text(yaml.safe_dump(doc))
        clock = Clock()
        app = create_app(load_settings(d / "c.yaml"),
                         forwarder=HttpxForwarder("http://upstream.test", transport=httpx.MockTransport(
                             lambda request: httpx.Response(200, json={"ok": True}))),
                         keys=KeyRing([generate_signing_key()], [generate_data_key()]),
                         clock=clock, audit=Audit("-", None, clock, stream=io.StringIO()))
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://gw.test", auth=("alice", PW)) as client:
                yield app, client
        finally:
            await app.shutdown()
    return make
