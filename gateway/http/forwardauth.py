"""Forward-auth mode: an ingress asks "may this request pass?" and the gateway answers the
Decision instead of forwarding (docs/forward-auth.md, SPEC §14).

Each endpoint reads the original request from exactly one ingress's convention and never
from another's; the decision itself is decide() — the same code reverse-proxy mode runs.

- ``{prefix}/auth/nginx``: nginx ``auth_request`` — X-Original-Method, X-Original-URI, the
  subrequest's Host; no body.
- ``{prefix}/auth/caddy``: Caddy ``forward_auth`` — X-Forwarded-Method, -Proto, -Host, -Uri;
  no body (Caddy keeps the original query on the auth request: ignored).
- ``{prefix}/auth/traefik``: Traefik ForwardAuth — the same four fields, the body when
  ``forwardBody`` sends one, and the auth request's own method when
  ``preserveRequestMethod`` makes it the original's.
- ``{prefix}/auth/envoy/<path>``: Envoy ``ext_authz`` (HTTP service) — the auth request's
  own method, its path after the endpoint prefix and its query; the body when
  ``with_request_body`` sends it whole.

Answers: 200 with all four evidence headers (empty where they do not apply), 401 with the
challenges and problem+json of reverse-proxy mode, 403, or a problem's status (400 for a
malformed or ambiguous original request, 503 when the store cannot answer).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.audit import Audit
from gateway.config.settings import Settings
from gateway.decision.decide import Decider, Decision, View
from gateway.decision.uses import TokenUses
from gateway.http.wire import Receive, Scope, Send, read_body, request_id, send_problem
from gateway.keys import load_forward_secret
from gateway.metrics import METRICS, NO_RULE
from gateway.primitives import REQUEST_ID, Networks, new_request_id
from gateway.problems import Headers, Problem, bad_request

SECRET_HEADER = b"x-stepgate-auth-secret"
# The answer a server writes itself (quick): status line and headers up to the blank line
# the server adds after its own fields (Date, Server, Connection).
_OK = b"HTTP/1.1 200 OK\r\n"
_UNSAFE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
ENVOY_PARTIAL = b"x-envoy-auth-partial-body"
FRAMING = (b"content-length", b"transfer-encoding")
Body = Literal["never", "framed", "envoy"]
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
# An origin-form target (RFC 9112 §3.2.1) of visible ASCII: what an ingress read from a
# request line. The canonicaliser judges its path as it judges a request line's.
_TARGET = re.compile(rb"/[\x21-\x7e]*")


@dataclass(frozen=True, slots=True)
class Convention:
    """Where one ingress puts the original request: header names (lower case) or None for
    "the auth request's own" method, target or Host."""

    name: str
    method: bytes | None
    uri: bytes | None
    host: bytes | None
    proto: bytes | None
    body: Body
    challenge_first: bool = False  # nginx relays only the first WWW-Authenticate field
    carried: frozenset[bytes] = frozenset()  # the names above that are set

    def __post_init__(self) -> None:
        object.__setattr__(self, "carried", frozenset(
            h for h in (self.method, self.uri, self.host, self.proto) if h is not None))


NGINX = Convention("nginx", b"x-original-method", b"x-original-uri", None, None, "never",
                   challenge_first=True)
_FORWARDED = (b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-host",
              b"x-forwarded-proto")
CADDY = Convention("caddy", *_FORWARDED, "never")
TRAEFIK = Convention("traefik", *_FORWARDED, "framed")
ENVOY = Convention("envoy", None, None, None, None, "envoy")


@dataclass(slots=True)
class Original:
    """The request the ingress asks about, as the decision sees it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body_seen: bool


def _name(h: bytes) -> str:
    """A header name as people write it: x-original-uri -> X-Original-URI."""
    return "-".join(p.upper() if p == "uri" else p.capitalize()
                    for p in h.decode("latin-1").split("-"))


def _refuse(detail: str) -> Problem:
    return bad_request(detail, "ambiguous-request")


def read_original(conv: Convention, method: str, target: bytes, query: bytes,
                  headers: list[tuple[bytes, bytes]], guarded: frozenset[bytes]) -> Original:
    """The original request from an auth request, or 400 when the convention's fields are
    missing, repeated, malformed or sent in an '_' spelling. ``target`` is the path after
    the endpoint (Envoy's convention); ``guarded`` are names whose '_' spelling is refused
    (the gateway's own headers)."""
    carried = conv.carried
    values: dict[bytes, bytes] = {}
    out: list[tuple[bytes, bytes]] = []
    framed = False  # the auth request carries a body of at least one byte
    partial: bytes | None = None
    for k, v in headers:
        if k in carried:
            if k in values:
                raise _refuse(f"the request carries {_name(k)} more than once; the gateway "
                              "cannot know which one the ingress meant")
            values[k] = v
            continue
        if k == SECRET_HEADER:
            continue
        if 0x5F in k and ((n := k.replace(b"_", b"-")) in guarded or n in carried):
            raise _refuse(f"the request carries {k.decode('latin-1')!r}, an '_' spelling of a "
                          "header the gateway reads; an upstream could read it as that header")
        if k in FRAMING:
            framed = framed or k == b"transfer-encoding" or v.strip() not in (b"0", b"")
            if conv.body == "never":
                continue  # the auth request's own framing, not the original's
        elif k == ENVOY_PARTIAL and conv.body == "envoy":
            partial = v
            continue
        elif k == b"host" and conv.host is not None:
            continue  # the ingress's request to the gateway; the original is in the field
        out.append((k, v))
    missing = [_name(h) for h in (conv.method, conv.uri, conv.host, conv.proto)
               if h is not None and h not in values]
    if missing:
        raise bad_request(f"the {conv.name} forward-auth request lacks "
                          f"{', '.join(missing)}, which carry the original request")
    if conv.method is not None:
        original = values[conv.method]
        if _METHOD.fullmatch(original) is None:
            raise bad_request(f"{_name(conv.method)} is not an HTTP method")
        if conv.body == "framed" and method not in ("GET", original.decode()):
            # Traefik asks with GET, or with the original method (preserveRequestMethod).
            raise bad_request(f"the request's method {method} is neither GET nor the "
                              f"{_name(conv.method)} it carries")
        method = original.decode()
    if conv.uri is not None:
        target = values[conv.uri]
        target, _, query = target.partition(b"?")
    if _TARGET.fullmatch(target) is None or (query and _TARGET.fullmatch(b"/" + query) is None):
        raise bad_request("the original request target is not an origin-form path "
                          "of visible ASCII", "non-canonical-path")
    if 0x23 in query:  # b"#": reverse-proxy mode refuses a fragment anywhere in the target
        raise bad_request("the original request target carries a fragment ('#')",
                          "non-canonical-path")
    if conv.host is not None:
        out.append((b"host", values[conv.host]))
    if conv.proto is not None and values[conv.proto].lower() not in (b"http", b"https"):
        raise bad_request(f"{_name(conv.proto)} is neither http nor https")
    if conv.body == "never":
        seen = False
    elif conv.body == "framed":
        # Traefik says nothing of forwardBody: a body that arrives was forwarded; none (or
        # Go's Content-Length: 0 for a body-less POST) leaves the body unseen.
        seen = framed
    else:
        seen = _envoy_body(partial, framed)
    return Original(method, target, query, out, seen)


def _envoy_body(partial: bytes | None, framed: bool) -> bool:
    """Envoy marks a check request that carries the body (``with_request_body``) with
    x-envoy-auth-partial-body; "true" means the body was cut at max_request_bytes."""
    if partial is None:
        return False
    if partial.strip().lower() != b"false":
        raise Problem("body-not-seen", detail="Envoy sent only part of the body "
                      "(x-envoy-auth-partial-body: true); raise with_request_body."
                      "max_request_bytes or set allow_partial_message: false")
    return True


def _nobody(peer: str | None) -> bool:
    return False


class ForwardAuth:
    """The endpoints, who may ask them, and how a Decision is answered."""

    def __init__(self, settings: Settings, decider: Decider, uses: TokenUses,
                 audit: Audit, ids_trusted: Callable[[str | None], bool] = _nobody) -> None:
        self.decider = decider
        # Whether an ask's X-Request-Id is believed (the top-level trusted_proxies).
        self.ids_trusted = ids_trusted
        self.uses = uses
        self.audit = audit
        self.trusted = Networks(settings.forward_auth.trusted_proxies)
        self.secret = load_forward_secret(settings)
        base = settings.prefix.encode() + b"/auth/"
        self.prefix = base
        self.exact = {base + b"nginx": NGINX, base + b"caddy": CADDY,
                      base + b"traefik": TRAEFIK}
        self.envoy = base + b"envoy/"
        ev = settings.evidence
        self.evidence_names = tuple(n.lower().encode() for n in
                                    (ev.user, ev.rule, ev.factor, ev.verified_at))
        own = [settings.token_header, ev.user, ev.rule, ev.factor, ev.verified_at]
        self.guarded = frozenset(n.lower().encode() for n in own) | {SECRET_HEADER}
        # An allow without evidence (an allowed route) answers these, built once.
        self._empty: Headers = [(n, b"") for n in self.evidence_names] + \
            [(b"content-length", b"0")]
        self._empty_raw = _OK + b"".join(k + b": " + v + b"\r\n" for k, v in self._empty)

    def route(self, raw_path: bytes) -> tuple[Convention, bytes] | None:
        """The convention an auth path names and the original target it carries (Envoy's
        path), or None when ``raw_path`` is not a forward-auth endpoint."""
        conv = self.exact.get(raw_path)
        if conv is not None:
            return conv, b""
        if raw_path.startswith(self.envoy):
            return ENVOY, raw_path[len(self.envoy) - 1:]
        return None

    def _secret_ok(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self.secret is not None
        given = [v for k, v in headers if k == SECRET_HEADER]
        return len(given) == 1 and hmac.compare_digest(given[0], self.secret)

    def _refusal(self, scope: Scope) -> str | None:
        """Why the caller may not ask (audited, 403), or None."""
        client = scope.get("client")
        if (client[0] if client else None) not in self.trusted:
            return ("forward-auth endpoints answer only the peers in "
                    "forward_auth.trusted_proxies" if self.trusted else
                    "forward-auth is off (forward_auth.trusted_proxies is empty)")
        if self.secret is not None and not self._secret_ok(scope["headers"]):
            return ("the request lacks the forward-auth secret (X-Stepgate-Auth-Secret) or "
                    "carries a wrong one")
        return None

    def _view(self, scope: Scope, conv: Convention, target: bytes,
              read: Callable[[int], Awaitable[bytes]]) -> View:
        """The original request as the decision sees it (400 Problem when it cannot be read)."""
        client = scope.get("client")
        o = read_original(conv, scope["method"], target, scope.get("query_string", b""),
                          scope["headers"], self.guarded)
        return View(o.method, o.raw_path, o.query, o.headers, client[0] if client else None,
                    read, False, o.body_seen)

    def quick(self, scope: Scope) -> bytes | None:
        """The whole answer, written by the server without an ASGI cycle, when it is an
        allow known without waiting (decide's remembered allows and checked session
        tokens) to a body-less ask; None: the ASGI path answers (refusals, problems,
        anything that waits on the store)."""
        raw_path: bytes = scope["raw_path"]
        if not raw_path.startswith(self.prefix):
            return None
        endpoint = self.route(raw_path)
        if endpoint is None or endpoint[0].body != "never" or self._refusal(scope) is not None:
            return None
        try:
            v = self._view(scope, *endpoint, _no_body)
        except Problem:
            return None
        REQUEST_ID.set(request_id(scope["headers"]) if self.ids_trusted(v.client)
                       else new_request_id())
        d = self.decider.quick(v)
        if d is None or d.kind != "allow" or d.reservation is not None:
            return None
        return self._empty_raw if d.evidence is None else self._evidence_raw(d)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, conv: Convention,
                       target: bytes) -> None:
        refusal = self._refusal(scope)
        if refusal is not None:
            client = scope.get("client")
            await self.audit.emit("forward_auth_refused", endpoint=conv.name,
                                  peer=client[0] if client else None, reason=refusal)
            await send_problem(send, Problem("forward-auth-refused", detail=refusal))
            METRICS.decision("refused", NO_RULE)
            return
        headers = scope["headers"]

        async def body(limit: int) -> bytes:
            return await read_body(receive, headers, limit)
        try:
            v = self._view(scope, conv, target, body)
        except Problem as problem:
            await send_problem(send, problem)
            METRICS.decision("refused", NO_RULE)
            return
        await self.answer(send, conv, await self.decider.decide(v))

    async def answer(self, send: Send, conv: Convention, d: Decision) -> None:
        if d.kind == "allow":
            if d.reservation is not None:
                # The upstream's answer is never seen here: the use is spent now.
                await self.uses.settle(d.reservation, "success")
            headers = self._empty if d.evidence is None else self._evidence(d)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if d.kind == "own":
            await send_problem(send, Problem(
                "forbidden", detail="the request is for the gateway's own endpoints: route "
                f"{self.decider.prefix}/ to the gateway instead of asking about it"))
            return
        problem = d.problem
        assert problem is not None
        if conv.challenge_first and d.kind == "challenge":
            problem.headers.sort(key=lambda h: h[0] != b"www-authenticate" or
                                 not h[1].startswith(b"SecondFactor "))
        await send_problem(send, problem)

    def _evidence(self, d: Decision) -> Headers:
        given = {k.encode(): v for k, v in d.evidence or ()}
        out: Headers = [(n, given.get(n, "").encode()) for n in self.evidence_names]
        out.append((b"content-length", b"0"))
        return out

    def _evidence_raw(self, d: Decision) -> bytes | None:
        fields = self._evidence(d)
        if any(_UNSAFE.search(v) for _, v in fields):
            return None  # a value a header cannot carry: the ASGI path refuses it
        return _OK + b"".join(k + b": " + v + b"\r\n" for k, v in fields)


async def _no_body(limit: int) -> bytes:
    raise AssertionError("a body-less convention never reads the body")
