"""Small ASGI helpers for the hot path: reading and streaming bodies within limits, sending
problems."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from gateway.decision.request import header
from gateway.primitives import REQUEST_ID_SHAPE, new_request_id
from gateway.problems import Headers, Problem, too_large

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# Set in the scope by whoever sends a response start, so a later error is logged rather
# than answered a second time.
STARTED = "stepgate.started"


def request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The id of a request from a trusted proxy: the X-Request-Id it sent (one field, of a
    safe shape), else a new one. A client's own is never believed: ask only for trusted
    peers."""
    given = [v for k, v in headers if k == b"x-request-id"]
    if len(given) == 1 and REQUEST_ID_SHAPE.fullmatch(given[0]) is not None:
        return given[0].decode("ascii")
    return new_request_id()


class ClientGone(Exception):
    """The client disconnected while we were reading its body."""


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


async def send_problem(send: Send, problem: Problem) -> None:
    status, headers, body = problem.render()
    await send_bytes(send, status, headers, body)
