"""The gateway as one ASGI application: canonicalise, decide, challenge or forward."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.api.admin import load_admin_key
from gateway.api.handshake import Endpoints
from gateway.audit import Audit
from gateway.config.rules import Requirement, Rule
from gateway.config.settings import Settings
from gateway.decision.identity import IdentitySource, make_identity
from gateway.decision.paths import CanonicalPath, canonicalize
from gateway.decision.policies import NeedBody, Policy, RequestView
from gateway.decision.tokens import Bound, Signer, Token, token_fits
from gateway.decision.uses import Outcome, TokenUses
from gateway.factors import Factor, RecoveryFactor, TotpFactor
from gateway.factors.delivered import DeliveredFactor
from gateway.factors.delivery import deliverer
from gateway.http.wire import (
    STARTED,
    ClientGone,
    Receive,
    Scope,
    Send,
    check_request,
    header,
    method_override,
    read_body,
    send_problem,
    stream_body,
)
from gateway.keys import KeyRing
from gateway.problems import Headers, Problem
from gateway.proxy import AiohttpForwarder, Forwarder, HeaderPolicy, StrHeaders, UpstreamError
from gateway.store import Store, StoreUnavailable, open_store

log = logging.getLogger("stepgate")

MANAGE_RULE = "stepgate:manage"
GENERATION_TTL = 1.0


def store_down() -> Problem:
    return Problem("store-unavailable",
                   detail="the gateway cannot reach its store; protected routes are closed",
                   headers=[(b"retry-after", b"5")])


@functools.lru_cache(maxsize=1024)
def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Gateway:
    """``create_app`` builds one; everything that varies is injected."""

    def __init__(self, settings: Settings, *, store: Store | None = None,
                 forwarder: Forwarder | None = None, keys: KeyRing | None = None,
                 clock: Callable[[], float] = time.time, audit: Audit | None = None) -> None:
        self.settings = settings
        self.policy = Policy(settings.rules.rules, settings.default_action, settings.rules.sources)
        self.clock = clock
        self.keys = keys or KeyRing.from_settings(settings.keys)
        self.signer = Signer(self.keys.signing)
        self.store = store or open_store(settings.store_url, settings.store_timeout)
        self.uses = TokenUses(self.store, clock)
        up = settings.upstream
        self.forwarder: Forwarder = forwarder or AiohttpForwarder(
            up.url, connect_timeout=up.connect_timeout, read_timeout=up.read_timeout,
            pool_size=up.pool_size, pool_timeout=up.pool_timeout)
        ev = settings.evidence
        own = [settings.token_header, ev.user, ev.rule, ev.factor, ev.verified_at]
        if settings.header_identity is not None:
            own.append(settings.header_identity.name)
        self.headers = HeaderPolicy(own, settings.trusted_proxies)
        self.token_header = settings.token_header.lower().encode()
        self.ev = tuple(n.lower() for n in (ev.user, ev.rule, ev.factor, ev.verified_at))
        self.identity: IdentitySource | None = make_identity(
            settings.basic, settings.header_identity, self.forwarder, self.headers, clock)
        self.audit = audit or Audit(settings.audit_path, self.store, clock)
        self.factors: dict[str, Factor] = {
            "totp": TotpFactor(self.store, self.keys),
            "recovery": RecoveryFactor(self.store),
        }
        self.deliverers = {ch.name: deliverer(ch) for ch in settings.channels}
        self._channels = {ch.name: DeliveredFactor(ch, self.store, self.keys,
                                                   self.deliverers[ch.name], settings.totp_issuer)
                          for ch in settings.channels}
        for name, factor in self._channels.items():
            if factor.ch.second_factor:
                self.factors[name] = factor
        self.admin_key = load_admin_key(settings)
        self.background: set[asyncio.Task[None]] = set()
        self.manage_rule = Rule(
            name=MANAGE_RULE, index=-1, source="(built in)", action="require", methods=None,
            paths=(), path_regex=None, hosts=(), query=(), headers=(), json=(),
            require=Requirement(tuple(settings.factors), False, settings.manage.binding,
                                settings.manage.ttl, 0 if settings.manage.binding == "session"
                                else 1, MANAGE_RULE, None, "deny", "secondfactor",
                                "urn:stepgate:2fa"))
        self.prefix = settings.prefix
        self.prefix_slash = settings.prefix + "/"
        self.endpoints = Endpoints(self)
        self._started = False
        self._token_cache: dict[bytes, Token] = {}
        # user -> (token generation, when it was read): revocations made by another process
        # sharing the store take effect within GENERATION_TTL, those made here at once.
        self._generations: dict[str, tuple[int, float]] = {}
        self._session_fits: dict[tuple[bytes, str, str], tuple[Token, StrHeaders]] = {}
        # Allow decisions that depend only on (method, raw path, Host) are remembered; that
        # holds up to the first rule with query, header or JSON conditions.
        self._decisions: dict[tuple[str, bytes, bytes | None], tuple[CanonicalPath, Rule | None]] = {}
        self._position = {r.name: n for n, r in enumerate(self.policy.rules)}
        self._simple = next((n for n, r in enumerate(self.policy.rules)
                             if r.query or r.headers or r.json), len(self.policy.rules))
        if self._simple == len(self.policy.rules):
            self._simple += 1  # no rule has such conditions: default decisions are simple too

    # ------------------------------------------------------------------ ASGI

    async def startup(self) -> None:
        if not self._started:
            await self.store.open()
            self.signer.instance = self.store.instance_id
            self._started = True
            # Everything loaded so far lives as long as the process: keep the collector
            # from rescanning it on every full collection (measurable on the hot path).
            gc.collect()
            gc.freeze()

    async def shutdown(self) -> None:
        if self.background:
            await asyncio.wait(self.background, timeout=10)
        if self._started:
            await self.forwarder.aclose()
            await self.audit.drain()
            await self.store.close()
            self.audit.close()
            self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self.handle(scope, receive, send)
            except Problem as problem:
                if STARTED not in scope:
                    await send_problem(send, problem)
            except StoreUnavailable:
                log.error("store unavailable")
                if STARTED not in scope:
                    await send_problem(send, store_down())
            except ClientGone:
                return
            except Exception:
                # Our own fault: logged without request data, answered, never forwarded.
                log.exception("internal error")
                if STARTED not in scope:
                    await send_problem(send, Problem("internal-error"))
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as exc:  # noqa: BLE001 - reported to the server
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # ------------------------------------------------------------------ decisions

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        headers = scope["headers"]
        has_body, raw_host = check_request(headers, self.token_header,
                                           scope.get("http_version") != "1.0")
        method = scope["method"]
        body: bytes | None = None
        key = (method, raw_path, raw_host)
        hit = self._decisions.get(key)
        if hit is not None:
            cp, rule = hit
        else:
            cp = canonicalize(raw_path, normalize=self.settings.normalize_paths)
            path = cp.decoded
            if self.settings.case_insensitive:
                folded = path.lower()
                under = folded == self.prefix.lower() or folded.startswith(self.prefix_slash.lower())
            else:
                under = path == self.prefix or path.startswith(self.prefix_slash)
            if under:
                await self.endpoints.dispatch(scope, receive, send, cp)
                return
            host = raw_host.decode("latin-1").lower() if raw_host else ""
            if host.startswith("["):
                host = host[: host.find("]") + 1]
            else:
                host = host.partition(":")[0]
            req = RequestView(method, path, host, scope.get("query_string", b""), headers)
            try:
                rule = self.policy.match(req)
            except NeedBody:
                body = await self._buffer(receive, headers)
                rule = self.policy.match(dataclasses.replace(req, body=body))
            if (self._position[rule.name] if rule else len(self.policy.rules)) < self._simple:
                # Decided by method, raw path and Host alone, so the same three decide the
                # same way next time; matching restarts at the first conditional rule.
                if len(self._decisions) >= 4096:
                    self._decisions.clear()
                self._decisions[key] = (cp, rule)
        action = rule.action if rule is not None else self.policy.default_action
        if action == "allow":
            self.audit.forwarded("allowed", rule.name if rule else None, method, cp.raw)
            await self.forward(scope, receive, send, cp, body, has_body, [])
            return
        if action == "deny" or rule is None or rule.require is None:
            await self.audit.emit("denied", rule=rule.name if rule else None, method=method,
                                  path=cp.raw)
            raise Problem("forbidden", detail="the gateway's policy denies this request",
                          rule=rule.name if rule else None)
        await self.protect(scope, receive, send, cp, rule, body, has_body)

    async def _buffer(self, receive: Receive, headers: Any) -> bytes:
        encoding = header(headers, b"content-encoding")
        if encoding and encoding.strip().lower() != b"identity":
            raise Problem("unsupported-media-type",
                          detail="the gateway inspects this route's body and cannot read "
                          "an encoded (compressed) body")
        return await read_body(receive, headers, self.settings.max_body)

    async def protect(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                      rule: Rule, body: bytes | None, has_body: bool) -> None:
        req = rule.require
        assert req is not None
        headers = scope["headers"]
        if method_override(headers):
            raise Problem("method-override",
                          detail="method-override headers are refused on protected routes: "
                          "the upstream must act on the method the gateway decided on")
        user = await self.identify(scope)
        if req.binding == "request" and body is None:
            body = await self._buffer(receive, headers) if has_body else b""
        method = scope["method"]
        query = scope.get("query_string", b"")
        bound = Bound.of(method, cp.raw, query, body, headers) \
            if req.binding == "request" else None
        if user is None:
            await self.audit.emit("challenged", rule=rule.name, reason="no identity",
                                  method=method, path=cp.raw)
            raise self.challenge(rule, "", bound, identity=True)
        value = header(headers, self.token_header)
        token: Token | None = None
        now = self.clock()
        if value is not None and req.binding == "session":
            fit = self._session_fits.get((value, rule.name, user))
            if fit is not None and fit[0].expires >= now and (
                    req.max_age is None or now - fit[0].verified_at <= req.max_age) and \
                    fit[0].generation == await self.generation(user):
                # This token already fitted this rule for this user; only time and a
                # revocation can change that.
                self.audit.forwarded("token_used", rule.name, method, cp.raw, user, "session")
                await self.forward(scope, receive, send, cp, body, has_body, fit[1])
                return
        if value is not None:
            token = self.read_token(value, now)
            reason = "token is invalid or expired" if token is None else token_fits(
                token, rule, user, bound, now)
            if reason is None and token is not None and \
                    token.generation != await self.generation(user):
                reason = "token was revoked"
            if reason is not None:
                await self.audit.emit("token_rejected", user=user, rule=rule.name, reason=reason,
                                      method=method, path=cp.raw)
                raise self.challenge(rule, user, bound, detail=reason)
        if token is None:
            if not await self.enrolled(user, req):
                if req.unenrolled == "allow":
                    await self.audit.emit("allowed_unenrolled", user=user, rule=rule.name,
                                          method=method, path=cp.raw)
                    await self.forward(scope, receive, send, cp, body, has_body,
                                       self.evidence(user, rule.name, "none", None))
                    return
                await self.audit.emit("denied_unenrolled", user=user, rule=rule.name,
                                      method=method, path=cp.raw)
                raise self.not_enrolled(req)
            await self.audit.emit("challenged", user=user, rule=rule.name, method=method,
                                  path=cp.raw)
            raise self.challenge(rule, user, bound)
        extra = self.evidence(user, rule.name, "+".join(token.factors), token.verified_at)
        if token.uses == 0 and value is not None:
            if len(self._session_fits) >= 4096:
                self._session_fits.clear()
            self._session_fits[(value, rule.name, user)] = (token, extra)
        if token.uses == 0:
            self.audit.forwarded("token_used", rule.name, method, cp.raw, user, token.binding)
            await self.forward(scope, receive, send, cp, body, has_body, extra)
            return
        result = await self.uses.reserve(token)
        if result == "busy":
            raise Problem("token-in-use", detail="another request is using this token right now; retry when "
                          "it has finished")
        if result == "used":
            await self.audit.emit("token_rejected", user=user, rule=rule.name,
                                  reason="token already used", method=method, path=cp.raw)
            raise self.challenge(rule, user, bound, detail="token already used")
        self.audit.forwarded("token_used", rule.name, method, cp.raw, user, token.binding)
        await self.forward(scope, receive, send, cp, body, has_body, extra, reservation=token.jti)

    async def generation(self, user: str) -> int:
        """The user's current token generation, read from the store at most once per
        GENERATION_TTL (StoreUnavailable when it cannot be read: no token is accepted)."""
        hit = self._generations.get(user)
        now = time.monotonic()
        if hit is not None and now - hit[1] < GENERATION_TTL:
            return hit[0]
        value = await self.store.generation(user)
        if len(self._generations) >= 4096:
            self._generations.clear()
        self._generations[user] = (value, now)
        return value

    def forget_generation(self, user: str) -> None:
        """After a revocation made here: the next use reads the new generation."""
        self._generations.pop(user, None)

    def channel_factor(self, name: str) -> DeliveredFactor:
        return self._channels[name]

    def read_token(self, value: bytes, now: float) -> Token | None:
        """Signature-checked tokens; session tokens are remembered so their reuse costs a
        dictionary lookup instead of an HMAC (bounded; expiry is still checked)."""
        token = self._token_cache.get(value)
        if token is None:
            token = self.signer.read_token(value.decode("latin-1"), now)
            if token is None:
                return None
            if token.uses == 0:
                if len(self._token_cache) >= 4096:
                    self._token_cache.clear()
                self._token_cache[value] = token
        if token.expires < now:
            self._token_cache.pop(value, None)
            return None
        return token

    async def identify(self, scope: Scope) -> str | None:
        if self.identity is None:
            return None
        client = scope.get("client")
        return await self.identity.identify(scope["headers"], client[0] if client else None)

    async def enrolled(self, user: str, req: Requirement) -> bool:
        records = await self.store.factors(user)
        left = await self.store.recovery_codes_left(user) if "recovery" in req.factors else 0
        usable = [f for f in req.factors if f in self.factors and
                  self.factors[f].available(records, left)]
        if req.all_of:
            return len(usable) == len(req.factors)
        return bool(usable)

    def evidence(self, user: str, rule: str, factor: str, verified_at: float | None) -> StrHeaders:
        u, r, f, v = self.ev
        out = [(u, user), (r, rule), (f, factor)]
        if verified_at is not None:
            out.append((v, _iso(verified_at)))
        return out

    def not_enrolled(self, req: Requirement) -> Problem:
        return Problem("factor-not-enrolled",
                       detail="this route needs a second factor the account has not enrolled",
                       factors=list(req.factors), enroll_uri=f"{self.prefix}/factors")

    def challenge(self, rule: Rule, user: str, bound: Bound | None, *, identity: bool = False,
                  detail: str | None = None) -> Problem:
        req = rule.require
        assert req is not None
        ticket = self.signer.ticket(user=user, rule=rule, binding=req.binding, bound=bound,
                                    now=self.clock(), ttl=self.settings.ticket_ttl)
        uri = f"{self.prefix}/challenges"
        factors = " ".join(req.factors)
        headers: Headers = []
        if identity and self.identity is not None and self.identity.challenge:
            headers.append((b"www-authenticate", self.identity.challenge))
        headers.append((b"www-authenticate", (
            f'SecondFactor realm="{self.settings.realm}", rule="{rule.name}", '
            f'factors="{factors}", challenge_uri="{uri}", ticket="{ticket}"').encode()))
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
        return Problem("second-factor-required", detail=detail,
                       headers=headers, **extras)

    # ------------------------------------------------------------------ forwarding

    async def forward(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                      body: bytes | None, has_body: bool, extra: StrHeaders,
                      reservation: str | None = None) -> None:
        client = scope.get("client")
        out = self.headers.request(scope["headers"], client=client[0] if client else None,
                                   scheme=scope.get("scheme", "http"), extra=extra)
        query = scope.get("query_string", b"")
        target = cp.raw + "?" + query.decode("latin-1") if query else cp.raw
        payload: Any = body if body is not None else (stream_body(receive) if has_body else None)
        settled = reservation is None
        # Until proven otherwise the request may have reached the upstream (uses.py).
        outcome: Outcome = "unknown"
        try:
            try:
                resp = await self.forwarder.send(scope["method"], target, out, payload,
                                                 at_most_once=reservation is not None)
            except UpstreamError as exc:
                if exc.not_sent:
                    outcome = "not_sent"
                raise
            except ClientGone:
                raise
            except Exception as exc:  # noqa: BLE001 - any client-stack failure is a 502
                log.warning("upstream request failed: %s", exc.__class__.__name__)
                raise Problem("upstream-unavailable",
                              detail="the gateway could not reach the upstream service") from None
            try:
                if reservation is not None:
                    settled = True
                    await self.uses.settle(reservation, "success" if resp.status <
                                           self.settings.upstream.success_below else "refused")
                headers = self.headers.response(resp.headers)
                try:
                    small = await resp.small_body()
                except (TimeoutError, ConnectionError):
                    raise Problem("upstream-unavailable", detail="the upstream response broke off") from None
                scope[STARTED] = True
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": headers})
                if small is not None:
                    await send({"type": "http.response.body", "body": small})
                    return
                try:
                    async for chunk in resp.body():
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                except (TimeoutError, ConnectionError):
                    log.warning("upstream body interrupted")
                    return
                await send({"type": "http.response.body", "body": b""})
            finally:
                await resp.aclose()
        finally:
            if not settled and reservation is not None:
                await self.uses.settle(reservation, outcome)


def create_app(settings: Settings, *, store: Store | None = None,
               forwarder: Forwarder | None = None, keys: KeyRing | None = None,
               clock: Callable[[], float] = time.time, audit: Audit | None = None) -> Gateway:
    return Gateway(settings, store=store, forwarder=forwarder, keys=keys, clock=clock, audit=audit)


def app_from_env() -> Gateway:
    """Factory for server processes: loads the configuration named by STEPGATE_CONFIG."""
    import os

    from gateway.config.load import load_settings
    return create_app(load_settings(os.environ.get("STEPGATE_CONFIG", "config.yaml")))
