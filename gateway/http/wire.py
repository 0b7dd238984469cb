"""Small ASGI helpers: reading bodies within limits, JSON answers, header lookups."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

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


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


# RFC 3986 §3.2.2 host (a reg-name without percent-encoding, IPv4, or an IP literal in
# brackets) and an optional port: anything else is not a Host we copy anywhere.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_valid_hosts: set[bytes] = set()


def _ambiguous(what: str) -> Problem:
    return bad_request(f"the request has more than one {what}; the gateway cannot know which "
                       "one the upstream would read", "ambiguous-request")


def _check_host(host: bytes) -> None:
    if host in _valid_hosts:
        return
    if _HOST.fullmatch(host) is None:
        raise bad_request("the Host header is not a valid host[:port]", "invalid-host")
    if len(_valid_hosts) < 1024:
        _valid_hosts.add(host)


def check_request(headers: Sequence[tuple[bytes, bytes]], token_header: bytes,
                  http11: bool = True) -> tuple[bool, bytes | None]:
    """(whether the request carries a body, its Host) in one pass, or 400 for what an
    upstream could read differently from the gateway:
    - framing a request smuggler could exploit (RFC 9112 §6.3): both Content-Length and
      Transfer-Encoding, or several or invalid Content-Length values;
    - more than one Authorization or token header: the gateway identifies the user from
      one, an upstream might read the other and act for another user;
    - more than one Host, none on HTTP/1.1 (RFC 9112 §3.2), or one that is not a valid
      host[:port]."""
    lengths: list[bytes] = []
    te = False
    host = None
    hosts = auths = tokens = 0
    for k, v in headers:
        if k == b"host":
            host = v
            hosts += 1
        elif k == b"authorization":
            auths += 1
        elif k == b"content-length":
            lengths.append(v)
        elif k == b"transfer-encoding":
            te = True
        elif k == token_header:
            tokens += 1
    if hosts != 1:
        if hosts > 1:
            raise _ambiguous("Host header")
        if http11:
            raise bad_request("an HTTP/1.1 request must carry a Host header", "invalid-host")
    else:
        _check_host(host)  # type: ignore[arg-type]
    if auths > 1:
        raise _ambiguous("Authorization header")
    if tokens > 1:
        raise _ambiguous("token header")
    if not lengths and not te:
        return False, host
    if te and lengths:
        raise bad_request("the request has both Content-Length and Transfer-Encoding",
                          "bad-framing")
    if len(set(lengths)) > 1 or any(not v.strip().isdigit() for v in lengths):
        raise bad_request("the request has an invalid Content-Length", "bad-framing")
    if te:
        return True, host
    return int(lengths[0]) > 0, host


# Headers some frameworks read to act on another method than the request line's
# (X-HTTP-Method-Override and kin), in every spelling a WSGI upstream folds together.
METHOD_OVERRIDE = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})


def method_override(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for k, _ in headers:
        if k in METHOD_OVERRIDE or (b"_" in k and k.replace(b"_", b"-") in METHOD_OVERRIDE):
            return True
    return False


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
