"""Tickets (what a 401 is for) and tokens (what a verified factor authorizes), signed statelessly."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from gateway.config.rules import Rule

TICKET_SALT = "stepgate.ticket.v1"
TOKEN_SALT = "stepgate.token.v1"


def digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()[:24]).decode()


_EMPTY = digest(b"")
# The body of a request decided without its body (forward-auth endpoints an ingress sends
# no body to): never equal to a digest, so a token bound this way authorizes no request
# whose body the gateway does see, and a token bound to a seen body (even an empty one) is
# not accepted where the body is unknown.
BODY_UNSEEN = "unseen"


# The fields that change what the same body bytes mean to the upstream (RFC 9110 §8.3,
# §8.4): a token for a JSON body must not authorize the same bytes sent as a form, nor
# the same bytes declared gzip-encoded.
BODY_MEANING = (b"content-type", b"content-encoding")


def body_meaning(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"\n".join(k + b":" + v for k, v in headers if k in BODY_MEANING)


def hostname(raw: bytes) -> str:
    """The host name rules match: lower case, no port (IP literals keep their brackets)."""
    host = raw.decode("latin-1").lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


@dataclass(frozen=True, slots=True)
class Bound:
    """The request facts a request-bound ticket or token is tied to."""

    method: str
    path: str
    query: str
    body: str  # digest of the body and of the fields that give it its meaning
    host: str = ""  # the host name as rules match it: an ingress may route hosts elsewhere

    @classmethod
    def of(cls, method: str, path: str, query: bytes, body: bytes | None,
           headers: Sequence[tuple[bytes, bytes]] = (), *, seen: bool = True) -> Bound:
        meaning = body_meaning(headers)
        host = hostname(next((v for k, v in headers if k == b"host"), b""))
        if not seen:
            body_digest = BODY_UNSEEN
        elif meaning:
            body_digest = digest(meaning + b"\n\n" + (body or b""))
        else:
            body_digest = digest(body) if body else _EMPTY
        return cls(method, path, digest(query) if query else _EMPTY, body_digest, host)


@dataclass(frozen=True, slots=True)
class Ticket:
    nonce: str
    user: str
    rule: str
    binding: str
    expires: float
    bound: Bound | None


@dataclass(frozen=True, slots=True)
class Token:
    jti: str
    user: str
    rule: str
    scope: str
    binding: str
    factors: tuple[str, ...]
    verified_at: float
    expires: float
    uses: int
    bound: Bound | None
    generation: int = 0  # the user's token generation when issued; a bump revokes it


class Signer:
    """HMAC-SHA256 via itsdangerous, one salt per purpose; the first key signs, all verify.

    Tickets and tokens name the store instance they were issued against (``instance``,
    set once the store is open): a gateway started on a fresh, empty store has forgotten
    which tokens were spent, so it refuses every token of the old one.
    """

    instance = ""

    def __init__(self, keys: list[str]) -> None:
        # itsdangerous signs with the *last* key of the list and accepts all of them.
        ring = list(reversed(keys))
        kw: dict[str, Any] = {"digest_method": hashlib.sha256}
        self._tickets = URLSafeSerializer(ring, salt=TICKET_SALT, signer_kwargs=kw)
        self._tokens = URLSafeSerializer(ring, salt=TOKEN_SALT, signer_kwargs=kw)

    @staticmethod
    def _bound_out(b: Bound | None, doc: dict[str, Any]) -> None:
        if b is not None:
            doc.update(m=b.method, p=b.path, q=b.query, d=b.body, h=b.host)

    @staticmethod
    def _bound_in(doc: dict[str, Any]) -> Bound | None:
        if "m" not in doc:
            return None
        return Bound(str(doc["m"]), str(doc["p"]), str(doc["q"]), str(doc["d"]),
                     str(doc.get("h", "")))

    def ticket(self, *, user: str, rule: Rule | str, binding: str, bound: Bound | None,
               now: float, ttl: float) -> str:
        name = rule if isinstance(rule, str) else rule.name
        doc: dict[str, Any] = {"v": 1, "i": self.instance, "n": secrets.token_urlsafe(12),
                               "u": user, "r": name, "b": binding, "x": int(now + ttl)}
        self._bound_out(bound if binding == "request" else None, doc)
        return str(self._tickets.dumps(doc))

    def read_ticket(self, value: str, now: float) -> Ticket | None:
        doc = self._load(self._tickets, value)
        if doc is None or doc.get("x", 0) < now:
            return None
        try:
            return Ticket(str(doc["n"]), str(doc["u"]), str(doc["r"]), str(doc["b"]),
                          float(doc["x"]), self._bound_in(doc))
        except (KeyError, TypeError, ValueError):
            return None

    def token(self, *, ticket: Ticket, scope: str, factors: tuple[str, ...], verified_at: float,
              now: float, ttl: float, uses: int, generation: int) -> Token:
        return Token(secrets.token_urlsafe(16), ticket.user, ticket.rule, scope, ticket.binding,
                     factors, verified_at, now + ttl, uses, ticket.bound, generation)

    def dump_token(self, t: Token) -> str:
        doc: dict[str, Any] = {"v": 1, "i": self.instance, "j": t.jti, "u": t.user, "r": t.rule,
                               "s": t.scope, "b": t.binding, "f": list(t.factors),
                               "a": int(t.verified_at), "x": int(t.expires), "n": t.uses,
                               "g": t.generation}
        self._bound_out(t.bound, doc)
        return str(self._tokens.dumps(doc))

    def read_token(self, value: str, now: float) -> Token | None:
        doc = self._load(self._tokens, value)
        if doc is None or doc.get("x", 0) < now:
            return None
        try:
            return Token(str(doc["j"]), str(doc["u"]), str(doc["r"]), str(doc["s"]),
                         str(doc["b"]), tuple(str(f) for f in doc["f"]), float(doc["a"]),
                         float(doc["x"]), int(doc["n"]), self._bound_in(doc), int(doc["g"]))
        except (KeyError, TypeError, ValueError):
            return None

    def _load(self, s: URLSafeSerializer, value: str) -> dict[str, Any] | None:
        if not value or len(value) > 4096:
            return None
        try:
            doc = s.loads(value)
        except (BadSignature, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("i") != self.instance:
            return None
        return doc


def token_fits(token: Token, rule: Rule, user: str, bound: Bound | None, now: float) -> str | None:
    """None when ``token`` authorizes this request under ``rule``; otherwise why not."""
    req = rule.require
    if req is None:
        return "rule needs no token"
    if token.user != user:
        return "token belongs to another user"
    if token.binding != req.binding:
        return "token has another binding"
    if req.binding == "session":
        if token.scope != req.scope:
            return "token is for another scope"
    elif token.rule != rule.name:
        return "token is for another rule"
    if req.binding == "request" and token.bound != bound:
        return "token is bound to another request"
    if req.max_age is not None and now - token.verified_at > req.max_age:
        return "factor verification is too old"
    have = set(token.factors)
    if req.all_of:
        if not set(req.factors) <= have:
            return "token lacks a required factor"
    elif not have & set(req.factors):
        return "token lacks a required factor"
    return None
