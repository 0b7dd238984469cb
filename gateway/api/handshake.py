"""The config document and the challenge handshake (docs/protocol.md): create a challenge
for a ticket, read its state, verify the factor's answer for a token."""

from __future__ import annotations

import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.bodies import parse
from gateway.api.common import answer, start, user_of
from gateway.api.context import Context
from gateway.api.models import (
    Answer,
    ChallengeCreate,
    ChallengeCreated,
    ChallengeState,
    ConfigDoc,
    FactorsRemaining,
    TokenIssued,
)
from gateway.decision.tokens import Ticket
from gateway.metrics import METRICS
from gateway.problems import Problem, bad_request, code_reused, not_found, retry_later
from gateway.store import ChallengeRecord

_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}\Z")


def invalid_ticket() -> Problem:
    return bad_request("the ticket is invalid, expired or not yours; repeat the original "
                       "request for a fresh one", "invalid-ticket")


class Handshake:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def config(self, request: Request) -> Response:
        ctx = self.ctx
        names = list(ctx.settings.factors)
        return answer(ConfigDoc, {
            "factors": names, "token_header": ctx.settings.token_header,
            "prefix": ctx.prefix, "enrollment": ctx.settings.enrollment,
            "factor_details": [ctx.factors[n].describe(ctx.prefix) for n in names
                               if n in ctx.factors],
        }, no_store=False)

    async def create_challenge(self, request: Request) -> Response:
        ctx = self.ctx
        user = await user_of(ctx, request)
        body = await parse(request, ChallengeCreate)
        now = ctx.clock()
        ticket = ctx.signer.read_ticket(body.ticket, now)
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
        wanted = body.factor
        if wanted is not None:
            if wanted not in req.factors:
                raise bad_request(f"this rule accepts {', '.join(req.factors)}, not '{wanted}'",
                                  "factor-not-allowed")
            if wanted not in available:
                raise ctx.decider.not_enrolled(req)
            name = wanted
        else:
            done = await ctx.store.verified_factors(user, ticket.nonce) if req.all_of else set()
            choices = [f for f in available if f not in done]
            if not choices:
                raise ctx.decider.not_enrolled(req)
            name = choices[0]
        factor = ctx.factors[name]
        cid = secrets.token_urlsafe(18)
        previous: ChallengeRecord | None = None
        if factor.delivers:
            # Asking again for the same ticket and factor resends: a new code after
            # resend_after, and the old one stops working.
            previous = await ctx.store.latest_challenge(user, ticket.nonce, name)
            if previous is not None and previous.sent_at is not None:
                wait = previous.sent_at + t.resend_after - now
                if wait > 0:
                    await ctx.regulator.give_back_challenge(user)
                    raise retry_later("resend-too-soon", wait,
                                      "a code was sent for this challenge moments ago")
        mine = [r for r in records if r.type == name and r.status == "active"]
        try:
            started = await start(ctx, user, factor, mine, cid)
        except Problem:
            await ctx.regulator.give_back_challenge(user)
            raise
        if previous is not None:
            await ctx.store.void_challenge(previous.id)
        ttl = ctx.settings.challenge_ttl
        if started.ttl is not None:
            ttl = min(ttl, started.ttl)
        await ctx.store.add_challenge(ChallengeRecord(
            id=cid, user=user, ticket_nonce=ticket.nonce, ticket=body.ticket, factor=name,
            factor_id=started.factor_id, state="pending", attempts_left=t.challenge_attempts,
            created_at=now, expires_at=now + ttl, ticket_expires_at=ticket.expires,
            code_hash=started.code_hash, sent_at=now if factor.delivers else None))
        await ctx.audit.emit("challenge_created", user=user, rule=rule.name, factor=name)
        METRICS.challenge(name)
        doc: dict[str, Any] = {"challenge_id": cid, "factor": name, "expires_in": int(ttl),
                               "attempts_left": t.challenge_attempts,
                               "verify_uri": f"{ctx.prefix}/challenges/{cid}/verify"}
        doc.update(started.extra)
        if factor.delivers:
            doc["resend_after"] = int(t.resend_after)
        return answer(ChallengeCreated, doc, 201,
                      headers={"location": f"{ctx.prefix}/challenges/{cid}"})

    async def _own_challenge(self, user: str, cid: str) -> ChallengeRecord:
        ch = await self.ctx.store.challenge(cid) if _ID.match(cid) else None
        if ch is None or ch.user != user:
            raise not_found()  # unknown and foreign ids look the same (docs/protocol.md)
        return ch

    def _state(self, ch: ChallengeRecord) -> str:
        if ch.state == "pending" and ch.expires_at < self.ctx.clock():
            return "expired"
        return ch.state

    async def challenge_state(self, request: Request) -> Response:
        ctx = self.ctx
        user = await user_of(ctx, request)
        ch = await self._own_challenge(user, request.path_params["challenge_id"])
        return answer(ChallengeState, {
            "challenge_id": ch.id, "factor": ch.factor, "state": self._state(ch),
            "attempts_left": ch.attempts_left,
            "expires_in": max(0, int(ch.expires_at - ctx.clock()))})

    async def verify(self, request: Request) -> Response:
        ctx = self.ctx
        user = await user_of(ctx, request)
        reply = await parse(request, Answer)
        ch = await self._own_challenge(user, request.path_params["challenge_id"])
        try:
            await ctx.regulator.check(user)
        except Problem:
            METRICS.verification(ch.factor, "locked")
            raise
        now = ctx.clock()
        state = self._state(ch)
        if state != "pending":
            METRICS.verification(ch.factor, "gone")
            raise Problem("challenge-gone",
                          detail=f"the challenge is {state}; request a new one", state=state)
        ticket = ctx.signer.read_ticket(ch.ticket, now)
        rule = ctx.decider.requirement_rule(ticket.rule) if ticket else None
        if ticket is None or rule is None or rule.require is None:
            METRICS.verification(ch.factor, "gone")
            raise Problem("challenge-gone",
                          detail="the challenge's ticket has expired; repeat the original request",
                          state="expired")
        factor = ctx.factors.get(ch.factor)
        if factor is None:  # the configuration no longer offers it
            METRICS.verification(ch.factor, "gone")
            raise Problem("challenge-gone", detail="this factor is no longer offered",
                          state="expired")
        records = await ctx.store.factors(user)
        result = await factor.verify(user, ch, records, reply.mapping(), now)
        if not result.ok and result.reused:
            # A replay (a double submit, a code used for the previous request) is refused
            # but is no evidence of guessing: no attempt spent, no failure counted.
            await ctx.audit.emit("code_reused", user=user, rule=rule.name, factor=ch.factor,
                                 factor_id=result.factor_id)
            METRICS.verification(ch.factor, "reused")
            raise code_reused(ch.attempts_left)
        if not result.ok:
            METRICS.verification(ch.factor, "wrong")
            left = await ctx.store.fail_challenge(ch.id)
            await ctx.regulator.failure(user, rule=rule.name, factor=ch.factor,
                                        challenge_left=left)
            if left <= 0:
                raise Problem("challenge-gone", detail="too many wrong codes; request a new challenge",
                              state="failed", attempts_left=0)
            raise Problem("wrong-code", detail="the code is not valid", attempts_left=left)
        if not await ctx.store.verify_challenge(ch.id):
            METRICS.verification(ch.factor, "gone")
            raise Problem("challenge-gone", detail="the challenge was already used", state="verified")
        await ctx.regulator.success(user)
        if result.factor_id is not None:
            await ctx.store.touch_factor(result.factor_id, now)
        await ctx.audit.emit("verified", user=user, rule=rule.name, factor=ch.factor)
        METRICS.verification(ch.factor, "ok")
        req = rule.require
        factors: tuple[str, ...] = (ch.factor,)
        if req.all_of:
            done = await ctx.store.verified_factors(user, ticket.nonce)
            remaining = [f for f in req.factors if f not in done]
            if remaining:
                return answer(FactorsRemaining, {"status": "verified", "remaining": remaining,
                                                 "challenge_uri": f"{ctx.prefix}/challenges"})
            factors = tuple(f for f in req.factors if f in done)
        minted = ctx.signer.token(ticket=Ticket(ticket.nonce, user, ticket.rule, ticket.binding,
                                               ticket.expires, ticket.bound),
                                 scope=req.scope, factors=factors, verified_at=now, now=now,
                                 ttl=req.ttl, uses=req.uses,
                                 generation=await ctx.store.generation(user))
        await ctx.audit.emit("token_issued", user=user, rule=rule.name, binding=req.binding,
                            factors=list(factors))
        return answer(TokenIssued, {
            "token": ctx.signer.dump_token(minted), "token_header": ctx.settings.token_header,
            "expires_in": int(req.ttl), "binding": req.binding, "uses": req.uses or None,
            "status": "verified"})
