"""Small ASGI helpers: reading bodies within limits, JSON answers, header lookups."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from gateway.decision.request import header
from gateway.problems import Headers, Problem, bad_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


JSON_LIMIT = 16 * 1024  # bodies of the gateway's own endpoints
# Set in the scope by whoever sends a response start, so a later error is logged rather
# than answered a second time.
STARTED = "stepgate.started"


class ClientGone(Exception):
    """The client disconnected while we were reading its body."""


def client_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def too_large(limit: int) -> Problem:
    return Problem("body-too-large", detail=f"the body may hold at most {limit} bytes", max_body=limit)


async def read_body(receive: Receive, headers: Sequence[tuple[bytes, bytes]], limit: int) -> bytes:
    length = header(headers, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            return


async def send_bytes(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: Any, headers: Headers | None = None,
                    no_store: bool = True) -> None:
    payload = json.dumps(doc).encode()
    hdrs: Headers = [(b"content-type", b"application/json"),
                     (b"content-length", str(len(payload)).encode())]
    if no_store:
        hdrs.append((b"cache-control", b"no-store"))
    hdrs.extend(headers or [])
    await send_bytes(send, status, hdrs, payload)


async def send_problem(send: Send, problem: Problem) -> None:
    status, headers, body = problem.render()
    await send_bytes(send, status, headers, body)


async def read_json(receive: Receive, headers: Sequence[tuple[bytes, bytes]], *,
                    limit: int = JSON_LIMIT, optional: bool = False) -> dict[str, Any]:
    """A JSON object body, or a problem+json 4xx that says what was wrong."""
    body = await read_body(receive, headers, limit)
    if not body.strip():
        if optional:
            return {}
        raise bad_request("expected a JSON object body, found an empty body", "invalid-body")
    ctype = (header(headers, b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json" and not ctype.endswith(b"+json"):
        raise Problem("unsupported-media-type", detail="expected Content-Type application/json")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("expected a JSON object body, found invalid JSON", "invalid-body") from None
    if not isinstance(doc, dict):
        raise bad_request("expected a JSON object body", "invalid-body")
    return doc


def field(doc: dict[str, Any], name: str, *, required: bool = True, max_len: int = 4096) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise bad_request(f"expected a string member '{name}', found none", "invalid-body")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise bad_request(f"expected '{name}' to be a non-empty string of at most {max_len} "
                          "characters", "invalid-body")
    return value
