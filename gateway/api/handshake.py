"""The gateway's own endpoints under the prefix: routing, the config document, and the
challenge handshake (create, state, verify). Self-service and admin live beside it."""

from __future__ import annotations

import re
import secrets
from typing import Any

from gateway.api.admin import Admin
from gateway.api.context import Context
from gateway.api.selfservice import RESERVATION, SelfService
from gateway.decision.paths import CanonicalPath
from gateway.decision.tokens import Ticket
from gateway.factors.delivered import DeliveredFactor
from gateway.http.wire import (
    JSON_LIMIT,
    STARTED,
    Receive,
    Scope,
    Send,
    client_of,
    field,
    header,
    read_json,
    send_json,
)
from gateway.problems import Headers, Problem, bad_request, not_found, retry_later
from gateway.store import ChallengeRecord, FactorRecord

_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}\Z")


def unauthenticated(ctx: Context) -> Problem:
    headers: Headers = []
    identity = ctx.decider.identity
    if identity is not None and identity.challenge:
        headers.append((b"www-authenticate", identity.challenge))
    return Problem("unauthenticated",
                   detail="send the same credentials as for the protected request",
                   headers=headers)


def require_json(headers: Any) -> None:
    """Every POST under the prefix acts on credentials, so it must declare a JSON body,
    even an empty one: an HTML form can only send simple content types, and anything
    else needs a CORS preflight the gateway never grants — with this, a cross-site form
    riding on cached Basic credentials cannot change anything (CSRF)."""
    ctype = (header(headers, b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json" and not (ctype.startswith(b"application/") and
                                              ctype.endswith(b"+json")):
        raise Problem("unsupported-media-type",
                      detail="expected Content-Type application/json (an empty body is "
                      "allowed where the body is optional)")


def invalid_ticket() -> Problem:
    return bad_request("the ticket is invalid, expired or not yours; repeat the original "
                       "request for a fresh one", "invalid-ticket")


class Endpoints:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        me = SelfService(self)
        admin = Admin(self)
        self.routes: list[tuple[re.Pattern[str], dict[str, Any]]] = [
            (re.compile(r"^/config\Z"), {"GET": self.config}),
            (re.compile(r"^/challenges\Z"), {"POST": self.create_challenge}),
            (re.compile(r"^/challenges/([^/]+)\Z"), {"GET": self.challenge_state}),
            (re.compile(r"^/challenges/([^/]+)/verify\Z"), {"POST": self.verify}),
            (re.compile(r"^/factors\Z"), {"GET": me.list_factors}),
            (re.compile(r"^/factors/totp\Z"), {"POST": me.enrol_totp}),
            (re.compile(r"^/factors/([^/]+)/confirm\Z"), {"POST": me.confirm}),
            (re.compile(r"^/factors/([^/]+)\Z"), {"POST": me.enrol_channel,
                                                   "DELETE": me.delete_factor}),
            (re.compile(r"^/recovery-codes\Z"), {"POST": me.recovery_codes}),
            *admin.routes(),
        ]

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
        ctx = self.ctx
        rest = cp.decoded[len(ctx.prefix):] or "/"
        if rest.endswith("/") and rest != "/":
            rest = rest[:-1]
        for rx, methods in self.routes:
            m = rx.match(rest)
            if m is None:
                continue
            handler = methods.get(scope["method"])
            if handler is None:
                allow = ", ".join(methods).encode()
                raise Problem("method-not-allowed", headers=[(b"allow", allow)])

            async def tracking_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    scope[STARTED] = True
                await send(message)

            if scope["method"] == "POST":
                require_json(scope["headers"])
            try:
                await handler(scope, receive, tracking_send, cp, *m.groups())
            finally:
                jti = scope.pop(RESERVATION, None)
                if jti is not None:  # the change failed: the token may be used again
                    await ctx.uses.settle(jti, "refused")
            return
        raise not_found()

    # ---------------------------------------------------------------- helpers

    async def user(self, scope: Scope) -> str:
        user = await self.ctx.decider.identify(scope["headers"], client_of(scope))
        if user is None:
            raise unauthenticated(self.ctx)
        return user

    async def deliver(self, user: str, factor: DeliveredFactor, record: FactorRecord,
                      challenge_id: str) -> str:
        """Send a code within the per-user send limit; a failed delivery is not counted."""
        ctx = self.ctx
        await ctx.regulator.start_send(user)
        try:
            digest = await factor.send_code(record, challenge_id)
        except Problem:
            await ctx.regulator.give_back_send(user)
            await ctx.audit.emit("delivery_failed", user=user, factor=factor.type)
            raise
        await ctx.audit.emit("code_sent", user=user, factor=factor.type, factor_id=record.id)
        return digest

    # ---------------------------------------------------------------- config

    async def config(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
        ctx = self.ctx
        await send_json(send, 200, {
            "factors": list(ctx.settings.factors), "token_header": ctx.settings.token_header,
            "prefix": ctx.prefix, "enrollment": ctx.settings.enrollment,
        }, no_store=False)

    # ---------------------------------------------------------------- challenges

    async def create_challenge(self, scope: Scope, receive: Receive, send: Send,
                               cp: CanonicalPath) -> None:
        ctx = self.ctx
        user = await self.user(scope)
        doc = await read_json(receive, scope["headers"], limit=JSON_LIMIT)
        raw_ticket = field(doc, "ticket")
        wanted = field(doc, "factor", required=False, max_len=64)
        now = ctx.clock()
        assert raw_ticket is not None
        ticket = ctx.signer.read_ticket(raw_ticket, now)
        if ticket is None or ticket.user not in ("", user):
            raise invalid_ticket()
        rule = ctx.decider.requirement_rule(ticket.rule)
        if rule is None or rule.require is None or rule.require.binding != ticket.binding:
            raise invalid_ticket()
        await ctx.regulator.check(user)
        t = ctx.settings.throttle
        await ctx.regulator.start_challenge(user)
        req = rule.require
        records = await ctx.store.factors(user)
        left = await ctx.store.recovery_codes_left(user)
        available = [f for f in req.factors if f in ctx.factors and
                     ctx.factors[f].available(records, left)]
        if wanted is not None:
            if wanted not in req.factors:
                raise bad_request(f"this rule accepts {', '.join(req.factors)}, not '{wanted}'",
                                  "factor-not-allowed")
            if wanted not in available:
                raise ctx.decider.not_enrolled(req)
            factor = wanted
        else:
            done = await ctx.store.verified_factors(user, ticket.nonce) if req.all_of else set()
            choices = [f for f in available if f not in done]
            if not choices:
                raise ctx.decider.not_enrolled(req)
            factor = choices[0]
        impl = ctx.factors[factor]
        cid = secrets.token_urlsafe(18)
        ttl = ctx.settings.challenge_ttl
        sent_at = None
        digest: str | None = None
        started_id: str | None = None
        extra: dict[str, Any] = {}
        if isinstance(impl, DeliveredFactor):
            # Asking again for the same ticket and factor resends: a new code after
            # resend_after, and the old one stops working.
            previous = await ctx.store.latest_challenge(user, ticket.nonce, factor)
            if previous is not None and previous.sent_at is not None:
                wait = previous.sent_at + t.resend_after - now
                if wait > 0:
                    await ctx.regulator.give_back_challenge(user)
                    raise retry_later("resend-too-soon", wait,
                                      "a code was sent for this challenge moments ago")
            record = next(r for r in records if r.type == factor and r.status == "active")
            try:
                digest = await self.deliver(user, impl, record, cid)
            except Problem:
                await ctx.regulator.give_back_challenge(user)
                raise
            if previous is not None:
                await ctx.store.void_challenge(previous.id)
            started_id, sent_at = record.id, now
            ttl = min(ttl, impl.ch.ttl)
            extra = {"hint": f"Code sent to {record.label}", "resend_after": int(t.resend_after)}
        else:
            started = await impl.start(user, records, cid)
            started_id, digest, extra = started.factor_id, started.code_hash, started.extra
        await ctx.store.add_challenge(ChallengeRecord(
            id=cid, user=user, ticket_nonce=ticket.nonce, ticket=raw_ticket, factor=factor,
            factor_id=started_id, state="pending", attempts_left=t.challenge_attempts,
            created_at=now, expires_at=now + ttl, ticket_expires_at=ticket.expires,
            code_hash=digest, sent_at=sent_at))
        await ctx.audit.emit("challenge_created", user=user, rule=rule.name, factor=factor)
        body = {"challenge_id": cid, "factor": factor, "expires_in": int(ttl),
                "attempts_left": t.challenge_attempts,
                "verify_uri": f"{ctx.prefix}/challenges/{cid}/verify"}
        body.update(extra)
        await send_json(send, 201, body, headers=[(b"location", f"{ctx.prefix}/challenges/{cid}".encode())])

    async def _own_challenge(self, user: str, cid: str) -> ChallengeRecord:
        ctx = self.ctx
        ch = await ctx.store.challenge(cid) if _ID.match(cid) else None
        if ch is None or ch.user != user:
            raise not_found()  # unknown and foreign ids look the same (SPEC §3.3)
        return ch

    def _state(self, ch: ChallengeRecord) -> str:
        ctx = self.ctx
        if ch.state == "pending" and ch.expires_at < ctx.clock():
            return "expired"
        return ch.state

    async def challenge_state(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                              cid: str) -> None:
        ctx = self.ctx
        user = await self.user(scope)
        ch = await self._own_challenge(user, cid)
        await send_json(send, 200, {
            "challenge_id": ch.id, "factor": ch.factor, "state": self._state(ch),
            "attempts_left": ch.attempts_left,
            "expires_in": max(0, int(ch.expires_at - ctx.clock()))})

    async def verify(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                     cid: str) -> None:
        ctx = self.ctx
        user = await self.user(scope)
        doc = await read_json(receive, scope["headers"], limit=JSON_LIMIT)
        code = field(doc, "code", max_len=64)
        assert code is not None
        ch = await self._own_challenge(user, cid)
        await ctx.regulator.check(user)
        now = ctx.clock()
        state = self._state(ch)
        if state != "pending":
            raise Problem("challenge-gone",
                          detail=f"the challenge is {state}; request a new one", state=state)
        ticket = ctx.signer.read_ticket(ch.ticket, now)
        rule = ctx.decider.requirement_rule(ticket.rule) if ticket else None
        if ticket is None or rule is None or rule.require is None:
            raise Problem("challenge-gone",
                          detail="the challenge's ticket has expired; repeat the original request",
                          state="expired")
        records = await ctx.store.factors(user)
        result = await ctx.factors[ch.factor].verify(user, ch, records, code, now)
        if not result.ok:
            left = await ctx.store.fail_challenge(ch.id)
            await ctx.regulator.failure(user, rule=rule.name, factor=ch.factor,
                                        challenge_left=left)
            if left <= 0:
                raise Problem("challenge-gone", detail="too many wrong codes; request a new challenge",
                              state="failed", attempts_left=0)
            raise Problem("wrong-code", detail="the code is not valid",
                          attempts_left=left)
        if not await ctx.store.verify_challenge(ch.id):
            raise Problem("challenge-gone", detail="the challenge was already used", state="verified")
        await ctx.regulator.success(user)
        if result.factor_id is not None:
            await ctx.store.touch_factor(result.factor_id, now)
        await ctx.audit.emit("verified", user=user, rule=rule.name, factor=ch.factor)
        req = rule.require
        factors: tuple[str, ...] = (ch.factor,)
        if req.all_of:
            done = await ctx.store.verified_factors(user, ticket.nonce)
            remaining = [f for f in req.factors if f not in done]
            if remaining:
                await send_json(send, 200, {"status": "verified", "remaining": remaining,
                                            "challenge_uri": f"{ctx.prefix}/challenges"})
                return
            factors = tuple(f for f in req.factors if f in done)
        minted = ctx.signer.token(ticket=Ticket(ticket.nonce, user, ticket.rule, ticket.binding,
                                               ticket.expires, ticket.bound),
                                 scope=req.scope, factors=factors, verified_at=now, now=now,
                                 ttl=req.ttl, uses=req.uses,
                                 generation=await ctx.store.generation(user))
        await ctx.audit.emit("token_issued", user=user, rule=rule.name, binding=req.binding,
                            factors=list(factors))
        await send_json(send, 200, {
            "token": ctx.signer.dump_token(minted), "token_header": ctx.settings.token_header,
            "expires_in": int(req.ttl), "binding": req.binding, "uses": req.uses or None,
            "status": "verified"})

