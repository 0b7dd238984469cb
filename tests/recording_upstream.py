"""A test upstream that records exactly what it receives, one JSON line per request."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import sys

from aiohttp import web

LOG = sys.argv[2] if len(sys.argv) > 2 else "/dev/null"


def record(request: web.Request, body_len: int, body_sha: str, text: str | None) -> dict:
    doc = {
        "method": request.method,
        "target": request.raw_path,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_len": body_len,
        "body_sha256": body_sha,
        "body": text,
    }
    with open(LOG, "a") as fh:
        fh.write(json.dumps(doc) + "\n")
    return doc


async def handle(request: web.Request) -> web.StreamResponse:
    h = hashlib.sha256()
    n = 0
    head = b""
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
        if len(head) < 4096:
            head += chunk[:4096]
    text = head.decode("utf-8", "replace") if n <= 4096 else None
    doc = record(request, n, h.hexdigest(), text)
    if "drop" in request.query:
        # Received and recorded, then the connection breaks before any answer.
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    if "sleep" in request.query:
        await asyncio.sleep(float(request.query["sleep"]))
    if path_is(request, "/hook/fail"):
        return web.json_response({"error": "refused"}, status=500)
    path = request.path
    if path.startswith("/status/"):
        return web.json_response(doc, status=int(path.split("/")[2]))
    if path == "/slow":
        await asyncio.sleep(5)
        return web.json_response(doc)
    if path == "/big":
        size = int(request.query.get("size", "0"))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)})
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            part = block[: min(65536, size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp
    if path == "/cookies":
        resp = web.Response(status=302, text="moved")
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        resp.headers["Location"] = "/elsewhere"
        return resp
    if path == "/gzip":
        return web.Response(body=gzip.compress(b"hello gzip"),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    if path == "/hop":
        return web.Response(text="ok", headers={"Connection": "X-Secret-Hop",
                                                 "X-Secret-Hop": "1", "Keep-Alive": "timeout=5"})
    return web.json_response(doc)


def path_is(request: web.Request, path: str) -> bool:
    return request.path == path


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=1024 ** 3)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
