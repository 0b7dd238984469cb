"""The reference proxy: the gateway's server and client stack with no policy logic at all.

uvicorn (httptools, uvloop) in front, one aiohttp ClientSession behind, the same
timeouts and pool size; only hop-by-hop headers are dropped.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from yarl import URL

UPSTREAM = os.environ.get("REF_UPSTREAM", "http://127.0.0.1:9000")
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host",
       b"proxy-connection", b"trailer"}


async def lifespan(receive: Any, send: Any, on_shutdown: Any) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


class HttpxRefProxy:
    """The same proxy on httpx's default transport, to show why the gateway uses aiohttp."""

    def __init__(self) -> None:
        import httpx
        self.client = httpx.AsyncClient(base_url=UPSTREAM, timeout=30, trust_env=False,
                                        limits=httpx.Limits(max_keepalive_connections=100))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self.client.aclose)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP]
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        while True:
            msg = await receive()
            if not msg.get("more_body"):
                break
        resp = await self.client.request(scope["method"], target, headers=headers)
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": [(k.lower(), v) for k, v in resp.headers.raw if k.lower() not in HOP]})
        await send({"type": "http.response.body", "body": resp.content})


class RefProxy:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self.close)
            return
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100), auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=30))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k not in HOP]
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        async with self.session.request(scope["method"], URL(UPSTREAM + target, encoded=True),
                                        headers=headers, data=body or None,
                                        allow_redirects=False) as resp:
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(k.lower(), v) for k, v in resp.raw_headers
                                    if k.lower() not in HOP]})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


app = HttpxRefProxy() if os.environ.get("REF_CLIENT") == "httpx" else RefProxy()
