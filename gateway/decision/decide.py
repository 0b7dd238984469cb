"""decide(view) -> Decision: canonical path, policy, identity and token, in that order.

The one decision of the gateway. It knows nothing of ASGI: the caller hands it a plain
view of the request (with a way to read the body when a rule needs it) and gets back a
value — allow (with the evidence to pass on and, for a counted token, its reservation),
own (a request for the gateway's own endpoints), challenge, deny, or problem. Reverse-proxy
mode forwards an allow; forward-auth endpoints answer it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.audit import Audit
from gateway.config.rules import Requirement, Rule
from gateway.config.settings import Settings
from gateway.decision.identity import IdentitySource, Pending
from gateway.decision.paths import CanonicalPath, canonicalize
from gateway.decision.policies import NeedBody, PolicyEngine, RequestView
from gateway.decision.request import check_request, header, method_override
from gateway.decision.tokens import Bound, Signer, Token, hostname, token_fits
from gateway.decision.uses import TokenUses
from gateway.factors.base import Factor
from gateway.metrics import METRICS, NO_RULE
from gateway.primitives import BoundedCache, iso8601
from gateway.problems import Headers, Problem
from gateway.proxy.headers import StrHeaders
from gateway.store import Store, StoreUnavailable

MANAGE_RULE = "stepgate:manage"
GENERATION_TTL = 1.0

Kind = Literal["allow", "own", "challenge", "deny", "problem"]


@dataclass(slots=True)
class View:
    """What the decision may look at. ``read_body(limit)`` reads the whole body (413 past
    ``limit``); it is called only when a rule inspects or binds the body. ``body_seen`` is
    False where the body never reaches the gateway (a forward-auth endpoint the ingress
    sends no body to): a rule that inspects it, or insists on binding it, is refused."""

    method: str
    raw_path: bytes
    query: bytes
    headers: Sequence[tuple[bytes, bytes]]
    client: str | None
    read_body: Callable[[int], Awaitable[bytes]]
    http11: bool = True
    body_seen: bool = True


@dataclass(slots=True)
class Decision:
    kind: Kind
    path: CanonicalPath | None = None
    rule: Rule | None = None
    evidence: StrHeaders | None = None
    reservation: str | None = None  # a counted token's jti: settle it after forwarding
    body: bytes | None = None  # read while deciding: forward these bytes
    has_body: bool = False
    problem: Problem | None = None


def body_not_seen(detail: str) -> Problem:
    return Problem("body-not-seen", detail=detail)


def store_down() -> Problem:
    return Problem("store-unavailable",
                   detail="the gateway cannot reach its store; protected routes are closed",
                   headers=[(b"retry-after", b"5")])


class Decider:
    """Owns the path from a request to a Decision, and what the handshake needs of it
    (identity, challenges, tokens, revocation)."""

    def __init__(self, settings: Settings, engine: PolicyEngine, *, store: Store,
                 signer: Signer, identity: IdentitySource | None, factors: dict[str, Factor],
                 uses: TokenUses, audit: Audit, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.engine = engine  # one reference: a reload swaps it
        self.store = store
        self.signer = signer
        self.identity = identity
        self.factors = factors
        self.uses = uses
        self.audit = audit
        self.clock = clock
        self.prefix = settings.prefix
        self._prefix_slash = settings.prefix + "/"
        self.token_header = settings.token_header.lower().encode()
        ev = settings.evidence
        self._ev = tuple(n.lower() for n in (ev.user, ev.rule, ev.factor, ev.verified_at))
        self.manage_rule = Rule(
            name=MANAGE_RULE, index=-1, source="(built in)", action="require", methods=None,
            paths=(), path_regex=None, hosts=(), query=(), headers=(), json=(),
            require=Requirement(tuple(settings.factors), False, settings.manage.binding,
                                settings.manage.ttl, 0 if settings.manage.binding == "session"
                                else 1, MANAGE_RULE, None))
        # Session tokens are remembered so their reuse costs a lookup instead of an HMAC,
        # and so is which rule each fitted for which user; expiry, max_age and revocation
        # are still checked on every use.
        self._tokens: BoundedCache[bytes, Token] = BoundedCache()
        # (token, rule, user) -> (token, evidence, the audit line's event/user/rule part)
        self._fits: BoundedCache[tuple[bytes, str, str], tuple[Token, StrHeaders, str]] = \
            BoundedCache()
        # user -> (token generation, when read): revocations made by another process sharing
        # the store take effect within GENERATION_TTL, those made here at once.
        self._generations: BoundedCache[str, tuple[int, float]] = BoundedCache()

    # ------------------------------------------------------------------ the decision

    def quick(self, v: View) -> Decision | None:
        """The decision when it needs no waiting — an allow remembered for this method,
        path and Host, or a session token this process already checked for the rule — else
        None (then decide() decides). The same code decide() runs first."""
        try:
            has_body, raw_host, value = check_request(v.headers, self.token_header, v.http11)
        except Problem:
            return None
        hit = self.engine.decisions.data.get((v.method, v.raw_path, raw_host))
        return None if hit is None else self._remembered(v, hit, has_body, value)

    def _remembered(self, v: View, hit: tuple[CanonicalPath, Rule | None, Any],
                    has_body: bool, value: bytes | None) -> Decision | None:
        cp, rule, allowed = hit
        if allowed is not None:  # an allow decided before: the same decision
            self.audit.stamped(allowed[2])
            METRICS.decision("allowed", rule.name if rule else None)
            return allowed[has_body]  # type: ignore[no-any-return]
        if value is not None and rule is not None and rule.require is not None and \
                rule.require.binding == "session":
            return self._fitted(v, cp, rule, value, None, has_body)
        return None

    async def decide(self, v: View) -> Decision:
        try:
            has_body, raw_host, value = check_request(v.headers, self.token_header, v.http11)
            engine = self.engine
            key = (v.method, v.raw_path, raw_host)
            hit = engine.decisions.data.get(key)
            body: bytes | None = None
            if hit is not None:
                known = self._remembered(v, hit, has_body, value)
                if known is not None:
                    return known
                cp, rule, _ = hit
            else:
                cp = canonicalize(v.raw_path, normalize=self.settings.normalize_paths)
                if self._own(cp.decoded):
                    METRICS.decision("own", NO_RULE)
                    return Decision("own", cp, has_body=has_body)
                req = RequestView(v.method, cp.decoded, _host(raw_host), v.query, v.headers)
                try:
                    rule = engine.match(req)
                except NeedBody:
                    if not v.body_seen:
                        await self.audit.emit("denied", reason="body not seen",
                                              method=v.method, path=cp.raw)
                        METRICS.decision("denied", NO_RULE)
                        return Decision("deny", cp, problem=body_not_seen(
                            "a rule inspects this request's body, which this endpoint does "
                            "not receive; the gateway refuses rather than guess"))
                    body = await self._read(v)
                    rule = engine.match(dataclasses.replace(req, body=body))
            action = rule.action if rule is not None else engine.default_action
            if hit is None:
                engine.remember(key, cp, rule, self._allowed(v.method, cp, rule)
                                if action == "allow" else None)
            if action == "allow":
                self.audit.forwarded("allowed", rule.name if rule else None, v.method, cp.raw)
                METRICS.decision("allowed", rule.name if rule else None)
                return Decision("allow", cp, rule, None, None, body, has_body)
            if rule is None or rule.require is None:
                await self.audit.emit("denied", rule=rule.name if rule else None,
                                      method=v.method, path=cp.raw)
                METRICS.decision("denied", rule.name if rule else None)
                return Decision("deny", cp, rule, problem=Problem(
                    "forbidden", detail="the gateway's policy denies this request",
                    rule=rule.name if rule else None))
            if hit is None and value is not None and rule.require.binding == "session":
                fitted = self._fitted(v, cp, rule, value, body, has_body)
                if fitted is not None:
                    return fitted
            return await self._protect(v, cp, rule, body, has_body, value)
        except Problem as problem:
            if problem.name == "second-factor-required":  # counted where it was raised
                return Decision("challenge", problem=problem)
            METRICS.decision("refused", NO_RULE)
            return Decision("problem", problem=problem)
        except StoreUnavailable:
            METRICS.decision("refused", NO_RULE)
            return Decision("problem", problem=store_down())

    def _allowed(self, method: str, cp: CanonicalPath, rule: Rule | None
                 ) -> tuple[Decision, Decision, str]:
        """What a cached allow returns (without and with a body; nobody mutates a
        Decision) and the tail of its audit line: a repeated allow builds nothing."""
        return (Decision("allow", cp, rule), Decision("allow", cp, rule, has_body=True),
                self.audit.tail("allowed", rule.name if rule else None, method, cp.raw))

    def _own(self, path: str) -> bool:
        if self.settings.case_insensitive:
            path = path.lower()
            return path == self.prefix.lower() or path.startswith(self._prefix_slash.lower())
        return path == self.prefix or path.startswith(self._prefix_slash)

    async def _read(self, v: View) -> bytes:
        encoding = header(v.headers, b"content-encoding")
        if encoding and encoding.strip().lower() != b"identity":
            raise Problem("unsupported-media-type",
                          detail="the gateway inspects this route's body and cannot read an "
                          "encoded (compressed) body")
        return await v.read_body(self.settings.max_body)

    def _fitted(self, v: View, cp: CanonicalPath, rule: Rule, value: bytes,
                body: bytes | None, has_body: bool) -> Decision | None:
        """A session token this process already checked for this rule and user, decided
        without waiting; None when anything needs the full path (_protect): an unknown
        password, a generation to re-read, a token not seen before or no longer good."""
        if method_override(v.headers):
            return None  # _protect refuses it
        ident = self.identity
        user = ident.known(v.headers, v.client) if ident is not None else None
        if user is None or isinstance(user, Pending):
            return None
        fit = self._fits.data.get((value, rule.name, user))
        if fit is None:
            return None
        known, evidence, line = fit
        now = self.clock()
        max_age = rule.require.max_age  # type: ignore[union-attr]
        if known.expires < now or (max_age is not None and now - known.verified_at > max_age):
            return None
        gen = self._generations.data.get(user)
        if gen is None or time.monotonic() - gen[1] >= GENERATION_TTL or \
                known.generation != gen[0]:
            return None
        self.audit.stamped(line + Audit.rest(v.method, cp.raw, "session"))
        METRICS.decision("token", rule.name)
        return Decision("allow", cp, rule, evidence, None, body, has_body)

    async def _protect(self, v: View, cp: CanonicalPath, rule: Rule, body: bytes | None,
                       has_body: bool, value: bytes | None) -> Decision:
        req = rule.require
        assert req is not None
        if req.body == "required" and not v.body_seen:
            await self.audit.emit("denied", rule=rule.name, reason="body not seen",
                                  method=v.method, path=cp.raw)
            METRICS.decision("denied", rule.name)
            return Decision("deny", cp, rule, problem=body_not_seen(
                f"rule '{rule.name}' binds the request body (require.body: required), which "
                "this endpoint does not receive"))
        if method_override(v.headers):
            raise Problem("method-override",
                          detail="method-override headers are refused on protected routes: "
                          "the upstream must act on the method the gateway decided on")
        ident = self.identity
        user = ident.known(v.headers, v.client) if ident is not None else None
        if isinstance(user, Pending):
            user = await self.identify(v.headers, v.client)
        if req.binding == "request" and body is None and v.body_seen:
            body = await self._read(v) if has_body else b""
        bound = Bound.of(v.method, cp.raw, v.query, body, v.headers, seen=v.body_seen) \
            if req.binding == "request" else None
        if user is None:
            await self.audit.emit("challenged", rule=rule.name, reason="no identity",
                                  method=v.method, path=cp.raw)
            METRICS.decision("challenged", rule.name)
            raise self.challenge(rule, "", bound, identity=True)
        now = self.clock()
        token: Token | None = None
        if value is not None:
            token = self.read_token(value, now)
            reason = "token is invalid or expired" if token is None else token_fits(
                token, rule, user, bound, now)
            if reason is None and token is not None and \
                    token.generation != await self.generation(user):
                reason = "token was revoked"
            if reason is not None:
                await self.audit.emit("token_rejected", user=user, rule=rule.name, reason=reason,
                                      method=v.method, path=cp.raw)
                METRICS.decision("rejected", rule.name)
                raise self.challenge(rule, user, bound, detail=reason)
        if token is None:
            if not await self.enrolled(user, req):
                if req.unenrolled == "allow":
                    await self.audit.emit("allowed_unenrolled", user=user, rule=rule.name,
                                          method=v.method, path=cp.raw)
                    METRICS.decision("unenrolled", rule.name)
                    return Decision("allow", cp, rule, self.evidence(user, rule.name, "none", None),
                                    None, body, has_body)
                await self.audit.emit("denied_unenrolled", user=user, rule=rule.name,
                                      method=v.method, path=cp.raw)
                METRICS.decision("denied", rule.name)
                return Decision("deny", cp, rule, problem=self.not_enrolled(req))
            await self.audit.emit("challenged", user=user, rule=rule.name, method=v.method,
                                  path=cp.raw)
            METRICS.decision("challenged", rule.name)
            raise self.challenge(rule, user, bound)
        evidence = self.evidence(user, rule.name, "+".join(token.factors), token.verified_at)
        if token.uses == 0:
            if value is not None:
                self._fits.put((value, rule.name, user),
                               (token, evidence, Audit.head("token_used", rule.name, user)))
            self.audit.forwarded("token_used", rule.name, v.method, cp.raw, user, token.binding)
            METRICS.decision("token", rule.name)
            return Decision("allow", cp, rule, evidence, None, body, has_body)
        result = await self.uses.reserve(token)
        if result == "busy":
            raise Problem("token-in-use", detail="another request is using this token right "
                          "now; retry when it has finished")
        if result == "used":
            await self.audit.emit("token_rejected", user=user, rule=rule.name,
                                  reason="token already used", method=v.method, path=cp.raw)
            METRICS.decision("rejected", rule.name)
            raise self.challenge(rule, user, bound, detail="token already used")
        self.audit.forwarded("token_used", rule.name, v.method, cp.raw, user, token.binding)
        METRICS.decision("token", rule.name)
        return Decision("allow", cp, rule, evidence, token.jti, body, has_body)

    # ------------------------------------------------------------------ parts the handshake uses

    async def identify(self, headers: Sequence[tuple[bytes, bytes]],
                       client: str | None) -> str | None:
        if self.identity is None:
            return None
        return await self.identity.identify(headers, client)

    def read_token(self, value: bytes, now: float) -> Token | None:
        """A signature-checked, unexpired token, or None."""
        token = self._tokens.get(value)
        if token is None:
            token = self.signer.read_token(value.decode("latin-1"), now)
            if token is None:
                return None
            if token.uses == 0:
                self._tokens.put(value, token)
        if token.expires < now:
            self._tokens.pop(value)
            return None
        return token

    async def generation(self, user: str) -> int:
        """The user's token generation, read from the store at most once per
        GENERATION_TTL (StoreUnavailable when unreadable: then no token is accepted)."""
        hit = self._generations.get(user)
        now = time.monotonic()
        if hit is not None and now - hit[1] < GENERATION_TTL:
            return hit[0]
        value = await self.store.generation(user)
        self._generations.put(user, (value, now))
        return value

    def forget_tokens(self) -> None:
        """Drop every remembered token, fit and generation (the store's id changed)."""
        self._tokens.clear()
        self._fits.clear()
        self._generations.clear()

    def forget_generation(self, user: str) -> None:
        """After a revocation made here: the next use reads the new generation."""
        self._generations.pop(user)

    async def enrolled(self, user: str, req: Requirement) -> bool:
        records = await self.store.factors(user)
        left = await self.store.recovery_codes_left(user) if "recovery" in req.factors else 0
        usable = [f for f in req.factors if f in self.factors and
                  self.factors[f].available(records, left)]
        if req.all_of:
            return len(usable) == len(req.factors)
        return bool(usable)

    def requirement_rule(self, name: str) -> Rule | None:
        """The rule a ticket names: a policy rule or the built-in stepgate:manage."""
        if name == MANAGE_RULE:
            return self.manage_rule
        return self.engine.by_name.get(name)

    def evidence(self, user: str, rule: str, factor: str, verified_at: float | None) -> StrHeaders:
        u, r, f, v = self._ev
        out = [(u, user), (r, rule), (f, factor)]
        if verified_at is not None:
            out.append((v, iso8601(verified_at)))
        return out

    def not_enrolled(self, req: Requirement) -> Problem:
        return Problem("factor-not-enrolled",
                       detail="this route needs a second factor the account has not enrolled",
                       factors=list(req.factors), enroll_uri=f"{self.prefix}/factors")

    def challenge(self, rule: Rule, user: str, bound: Bound | None, *, identity: bool = False,
                  detail: str | None = None) -> Problem:
        """The 401 (docs/protocol.md): the identity source's challenge when nobody is identified,
        the SecondFactor challenge with a signed ticket, and RFC 9470's when asked for."""
        req = rule.require
        assert req is not None
        ticket = self.signer.ticket(user=user, rule=rule, binding=req.binding, bound=bound,
                                    now=self.clock(), ttl=self.settings.ticket_ttl)
        uri = f"{self.prefix}/challenges"
        headers: Headers = []
        if identity and self.identity is not None and self.identity.challenge:
            headers.append((b"www-authenticate", self.identity.challenge))
        headers.append((b"www-authenticate", (
            f'SecondFactor realm="{self.settings.realm}", rule="{rule.name}", '
            f'factors="{" ".join(req.factors)}", challenge_uri="{uri}", '
            f'ticket="{ticket}", binding="{req.binding}"').encode()))
        if req.challenge_style == "rfc9470":
            headers.append((b"www-authenticate", (
                'Bearer error="insufficient_user_authentication", error_description='
                f'"A second factor is required", acr_values="{req.acr_values}"').encode()))
        extras: dict[str, Any] = {
            "rule": rule.name, "factors": list(req.factors), "challenge_uri": uri,
            "ticket": ticket, "binding": req.binding, "token_header": self.settings.token_header,
        }
        if req.all_of:
            extras["all_of"] = True
        if req.max_age is not None:
            extras["max_age"] = int(req.max_age)
        return Problem("second-factor-required", detail=detail, headers=headers, **extras)


def _host(raw_host: bytes | None) -> str:
    """The host name rules match (no port; IP literals keep their brackets)."""
    return hostname(raw_host) if raw_host else ""
