"""The demo upstream (``stepgate demo-upstream``): a toy bank API that knows nothing of 2FA,
to put the gateway in front of."""

from __future__ import annotations

import json

from aiohttp import web

ACCOUNTS = {"1": {"id": "1", "owner": "alice", "balance": 1200}, "2": {"id": "2", "owner": "bob",
                                                                       "balance": 50}}


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


async def hello(request: web.Request) -> web.Response:
    return _json({"hello": "world"})


async def account(request: web.Request) -> web.Response:
    acc = ACCOUNTS.get(request.match_info["account"])
    return _json(acc) if acc else _json({"error": "no such account"}, 404)


async def change_account(request: web.Request) -> web.Response:
    return _json({"changed": request.match_info["account"], "method": request.method,
                  "by": request.headers.get("X-Stepgate-User")})


async def transaction(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return _json({"error": "expected JSON"}, 400)
    return _json({"accepted": True, "account": request.match_info["account"], "request": doc,
                  "verified_by": request.headers.get("X-Stepgate-Factor")}, 201)


async def internal(request: web.Request) -> web.Response:
    return _json({"secret": "internal metrics"})


async def me(request: web.Request) -> web.Response:
    if not request.headers.get("Authorization", "").startswith("Basic "):
        return _json({"error": "no credentials"}, 401)
    return _json({"ok": True})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/public/hello", hello)
    app.router.add_get("/accounts/{account}", account)
    app.router.add_route("PATCH", "/accounts/{account}", change_account)
    app.router.add_route("DELETE", "/accounts/{account}", change_account)
    app.router.add_post("/accounts/{account}/transactions", transaction)
    app.router.add_post("/accounts/{account}/transfers", transaction)
    app.router.add_get("/internal/{rest:.*}", internal)
    app.router.add_get("/me", me)
    return app


def serve(host: str, port: int) -> None:
    web.run_app(make_app(), host=host, port=port, access_log=None, print=None)
