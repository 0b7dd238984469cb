"""Header hygiene between client and upstream: hop-by-hop fields, our own headers,
forwarding and rewrite fields, evidence headers (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.primitives import Networks
from gateway.problems import Headers

# RFC 9110 §7.6.1 hop-by-hop fields, plus Proxy-Connection which old clients still send.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Forwarding fields: believed, in their '-' spelling only, from trusted_proxies; dropped
# from everyone else. Any X-Forwarded-* name counts (-Port, -Prefix, -Uri, ...).
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"forwarded", b"x-real-ip"})
FORWARDED_PREFIX = b"x-forwarded-"
# Fields that make some frameworks and proxies act on another path or method than the
# one the gateway evaluated (IIS/Symfony X-Original-URL and X-Rewrite-URL, nginx-style
# X-Original-URI, X-HTTP-Method-Override and kin): dropped from every peer.
REWRITE = frozenset({b"x-original-url", b"x-rewrite-url", b"x-original-uri",
                     b"x-http-method-override", b"x-http-method", b"x-method-override"})
VIA = "1.1 stepgate"
# Dropped from every client request: hop-by-hop fields, Host (the client stack sets the
# upstream's) and Expect (the gateway already answered any 100-continue).
_SKIP = HOP_BY_HOP | {b"host", b"expect"}
StrHeaders = list[tuple[str, str]]
_CONNECTION_OPTIONS = frozenset({b"keep-alive", b"close", b""})


def own_header_names(names: Iterable[str]) -> frozenset[bytes]:
    """Our headers in every spelling an upstream might fold together ('-' and '_')."""
    out: set[bytes] = set()
    for n in names:
        low = n.lower().encode("latin-1")
        out.add(low)
        out.add(low.replace(b"-", b"_"))
    return frozenset(out)


def _normalised(name: bytes) -> bytes:
    return name.replace(b"_", b"-")


class HeaderPolicy:
    """Builds the upstream request headers and filters the response headers."""

    def __init__(self, own: Iterable[str], trusted: Iterable[ipaddress.IPv4Network |
                                                              ipaddress.IPv6Network]) -> None:
        self.own = own_header_names(own)
        self.own_norm = frozenset(_normalised(n) for n in self.own)
        self.trusted = Networks(trusted)

    def is_trusted(self, client: str | None) -> bool:
        return client in self.trusted

    def request(self, headers: Iterable[tuple[bytes, bytes]], *, client: str | None,
                scheme: str, extra: Iterable[tuple[str, str]],
                request_id: str | None = None) -> StrHeaders:
        """The upstream request's headers, as str pairs for the client stack.

        The client's hop-by-hop fields, including every field its Connection header
        names, are removed first; only then are ours appended (docs/configuration.md), so a client
        cannot make the gateway drop its own evidence headers.
        """
        trusted = client in self.trusted
        own, own_norm = self.own, self.own_norm
        out: StrHeaders = []
        named: bytes | None = None
        host: bytes | None = None
        xff: bytes | None = None
        proto: bytes | None = None
        fhost: bytes | None = None
        via: bytes | None = None
        for k, v in headers:
            if k in _SKIP:
                if k == b"connection":
                    named = v if named is None else named + b"," + v
                elif k == b"host":
                    host = v
                continue
            if 0x5F in k:  # b"_" (an int test: `bytes in bytes` formats a TypeError first)
                # '_' spellings of our own, forwarding and rewrite fields reach a WSGI
                # upstream as the same variable (HTTP_X_FORWARDED_FOR): dropped from all.
                n = k.replace(b"_", b"-")
                if n in own_norm or n in FORWARDING or n in REWRITE or \
                        n.startswith(FORWARDED_PREFIX):
                    continue
            elif k in own or k in REWRITE:
                continue
            if k in FORWARDING or k.startswith(FORWARDED_PREFIX):
                if trusted:
                    if k == b"x-forwarded-for":
                        xff = v if xff is None else xff + b", " + v
                    elif k == b"x-forwarded-proto":
                        proto = v
                    elif k == b"x-forwarded-host":
                        fhost = v
                    else:
                        out.append((k.decode("latin-1"), v.decode("latin-1")))
                continue
            if k == b"via":
                via = v if via is None else via + b", " + v
                continue
            out.append((k.decode("latin-1"), v.decode("latin-1")))
        names = {t.strip().lower() for t in named.split(b",")} - _CONNECTION_OPTIONS \
            if named is not None else None
        if names:
            out = [(k, v) for k, v in out if k.encode("latin-1") not in names]
            if names & FORWARDING:
                xff = proto = fhost = None
            if b"via" in names:
                via = None
        addr = client or ""
        out.append(("x-forwarded-for", f"{xff.decode('latin-1')}, {addr}" if xff else addr))
        out.append(("x-forwarded-proto", proto.decode("latin-1") if proto else scheme))
        if fhost or host:
            out.append(("x-forwarded-host", (fhost or host or b"").decode("latin-1")))
        out.append(("via", f"{via.decode('latin-1')}, {VIA}" if via else VIA))
        if request_id is not None:
            out.append(("x-request-id", request_id))
        out.extend(extra)
        return out

    @staticmethod
    def response(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Lower-cased names (ASGI wants them so) without hop-by-hop fields, in one pass;
        a second only when Connection names fields beyond keep-alive/close."""
        out: Headers = []
        named: bytes | None = None
        for k, v in headers:
            k = k.lower()
            if k in HOP_BY_HOP:
                if k == b"connection":
                    named = v if named is None else named + b"," + v
                continue
            out.append((k, v))
        if named is not None:
            tokens = {t.strip().lower() for t in named.split(b",")} - _CONNECTION_OPTIONS
            if tokens:
                out = [(k, v) for k, v in out if k not in tokens]
        return out
