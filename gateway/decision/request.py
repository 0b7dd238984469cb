"""The request facts a decision rests on, and the requests refused before any decision
because an upstream could read them differently from the gateway."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.problems import Problem, bad_request


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
                  http11: bool = True) -> tuple[bool, bytes | None, bytes | None]:
    """(whether the request carries a body, its Host, its token header) in one pass, or 400
    for what an
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
    token = None
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
            token = v
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
        return False, host, token
    if te and lengths:
        raise bad_request("the request has both Content-Length and Transfer-Encoding",
                          "bad-framing")
    if len(set(lengths)) > 1 or any(not v.strip().isdigit() for v in lengths):
        raise bad_request("the request has an invalid Content-Length", "bad-framing")
    if te:
        return True, host, token
    return int(lengths[0]) > 0, host, token


# Headers some frameworks read to act on another method than the request line's
# (X-HTTP-Method-Override and kin), in every spelling a WSGI upstream folds together.
METHOD_OVERRIDE = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})


def method_override(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for k, _ in headers:
        if k in METHOD_OVERRIDE or (0x5F in k and k.replace(b"_", b"-") in METHOD_OVERRIDE):
            return True
    return False
