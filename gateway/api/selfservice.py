"""Self-service: enrol, confirm and remove factors, regenerate recovery codes; every change
after the first factor needs a `stepgate:manage` token and is announced out of band. The
first confirmed factor comes with a first set of recovery codes."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import shlex
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.bodies import answer_format, decode, parse, read_body, validate
from gateway.api.common import PATH, RESERVATION, answer, enrol_challenge_id, user_of
from gateway.api.context import Context
from gateway.api.models import ConfirmAnswer, Confirmed, FactorList
from gateway.decision.paths import CanonicalPath
from gateway.decision.request import header
from gateway.decision.tokens import Bound, token_fits
from gateway.factors.base import Factor, Started, enrols_as_text, outcome
from gateway.primitives import iso8601
from gateway.problems import Problem, code_reused, not_found
from gateway.store import ChallengeRecord, FactorRecord

log = logging.getLogger("stepgate")


def _iso(t: float | None) -> str | None:
    return None if t is None else iso8601(t)


def public(r: FactorRecord) -> dict[str, Any]:
    return {"id": r.id, "type": r.type, "status": r.status, "label": r.label,
            "created_at": _iso(r.created_at), "last_used_at": _iso(r.last_used_at)}


_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


class SelfService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------ step-up

    async def _has_active(self, user: str) -> tuple[list[FactorRecord], bool]:
        ctx = self.ctx
        records = await ctx.store.factors(user)
        active = any(r.status == "active" for r in records)
        if not active:
            active = await ctx.store.recovery_codes_left(user) > 0
        return records, active

    async def step_up(self, request: Request, user: str, body: bytes, active: bool) -> None:
        """Changes need a `stepgate:manage` token once the user has a factor."""
        ctx = self.ctx
        if not active:
            if ctx.settings.enrollment == "admin":
                raise Problem("enrollment-closed",
                              detail="an administrator enrols the first factor of an account")
            return
        scope = request.scope
        cp: CanonicalPath = scope[PATH]
        rule = ctx.decider.manage_rule
        assert rule.require is not None
        bound = Bound.of(scope["method"], cp.raw, scope.get("query_string", b""), body,
                         scope["headers"]) if rule.require.binding == "request" else None
        value = header(scope["headers"], ctx.decider.token_header)
        now = ctx.clock()
        token = ctx.decider.read_token(value, now) if value else None
        reason = token_fits(token, rule, user, bound, now) if token is not None else None
        if token is not None and reason is None and \
                token.generation != await ctx.decider.generation(user):
            reason = "token was revoked"
        if token is None or reason is not None:
            await ctx.audit.emit("challenged", user=user, rule=rule.name, method=scope["method"],
                                path=cp.raw)
            raise ctx.decider.challenge(rule, user, bound, detail=reason)
        if token.uses == 0:
            return
        result = await ctx.uses.reserve(token)
        if result == "busy":
            raise Problem("token-in-use")
        if result == "used":
            raise ctx.decider.challenge(rule, user, bound, detail="token already used")
        scope[RESERVATION] = token.jti  # released by the router unless committed

    async def managed(self, request: Request) -> tuple[str, dict[str, Any], list[FactorRecord]]:
        """The user, the body as a JSON object and the user's factors, once the change may
        go ahead: the body is read first, because a manage token binds it."""
        user = await user_of(self.ctx, request)
        body = await read_body(request)
        doc = decode(body, optional=True)
        records, active = await self._has_active(user)
        await self.step_up(request, user, body, active)
        return user, doc, records

    async def commit(self, request: Request) -> None:
        jti = request.scope.pop(RESERVATION, None)
        if jti is not None:
            await self.ctx.uses.settle(jti, "success")

    async def revoke_tokens(self, user: str) -> None:
        """Before a factor goes: the user's outstanding tokens stop working (docs/protocol.md)."""
        ctx = self.ctx
        await ctx.store.bump_generation(user)
        ctx.decider.forget_generation(user)

    # ------------------------------------------------------------ notifications

    def notify(self, user: str, what: str, extra_addresses: tuple[str, ...] = ()) -> None:
        """Tell the user about a change over the notify channel (OWASP: factor changes are
        announced out of band). Best effort, in the background: a failure is audited."""
        ctx = self.ctx
        name = ctx.settings.notify_channel
        if name is None:
            return

        async def run() -> None:
            try:
                records = await ctx.store.factors(user)
                channel = ctx.channels[name]
                addresses = {channel.address_of(r) for r in records
                             if r.type == name and r.status == "active"}
                addresses.update(extra_addresses)
                issuer = ctx.settings.totp_issuer
                for address in sorted(addresses):
                    await channel.send(address, f"{issuer}: {what} on your account. If this "
                                       "was not you, contact support now.")
                if addresses:
                    await ctx.audit.emit("notified", user=user, channel=name, change=what)
            except Exception as exc:  # noqa: BLE001 - a notification never fails the change
                log.warning("notification failed: %s", exc.__class__.__name__)
                await ctx.audit.emit("notification_failed", user=user, channel=name)
        task = asyncio.get_running_loop().create_task(run())
        ctx.background.add(task)
        task.add_done_callback(ctx.background.discard)

    # ------------------------------------------------------------ handlers

    async def list_factors(self, request: Request) -> Response:
        ctx = self.ctx
        user = await user_of(ctx, request)
        records = await ctx.store.factors(user)
        out = [public(r) for r in records]
        left = await ctx.store.recovery_codes_left(user)
        if left:
            out.append({"id": "recovery", "type": "recovery", "status": "active",
                        "label": "recovery codes", "remaining": left})
        return answer(FactorList, {"factors": out})

    async def enrol(self, request: Request) -> Response:
        return await self._enrol(request, request.path_params["factor"])

    async def recovery_codes(self, request: Request) -> Response:
        return await self._enrol(request, "recovery")

    async def _enrol(self, request: Request, name: str) -> Response:
        ctx = self.ctx
        factor = ctx.factors.get(name)
        if factor is None:
            raise Problem("unknown-factor", detail=f"no such factor; GET {ctx.prefix}/config "
                          "lists them", factors=list(ctx.factors))
        form = answer_format(request, factor)  # refused before anything is created
        user, doc, _records = await self.managed(request)
        body = validate(factor.enrol_body, doc)
        now = ctx.clock()
        fid = "f_" + secrets.token_urlsafe(12)
        enrolment = await factor.enrol(user, fid, body.model_dump(exclude_unset=True), now)
        reply = dict(enrolment.reply)
        audit: dict[str, Any] = dict(enrolment.details)
        record = enrolment.record
        if record is not None:
            if enrolment.challenge:
                # The first code goes out before anything is kept: a failed delivery creates
                # nothing and uses up nothing (docs/protocol.md).
                cid = enrol_challenge_id(fid)
                started = await self._start_enrolment(user, factor, record, cid)
                ttl = started.ttl if started.ttl is not None else ctx.settings.challenge_ttl
                await ctx.store.add_factor(record)
                await ctx.store.add_challenge(ChallengeRecord(
                    id=cid, user=user, ticket_nonce=f"enrol:{fid}", ticket="", factor=name,
                    factor_id=fid, state="pending",
                    attempts_left=ctx.settings.throttle.challenge_attempts, created_at=now,
                    expires_at=now + ttl, ticket_expires_at=now + ttl,
                    code_hash=started.code_hash, sent_at=now if factor.delivers else None))
                reply.update(started.extra)
                reply["expires_in"] = int(ttl)
            else:
                await ctx.store.add_factor(record)
            reply = {"id": fid, "type": name, "status": record.status, "label": record.label,
                     **reply, "confirm_uri": f"{ctx.prefix}/factors/{fid}/confirm"}
            audit.update(factor=name, factor_id=fid, status=record.status)
        await self.commit(request)
        await ctx.audit.emit(enrolment.event, user=user, **audit)
        if enrolment.notice is not None:
            self.notify(user, enrolment.notice)
        if not enrols_as_text(factor):
            return answer(factor.enrolled, reply, 201)
        vary = {"vary": "accept"}
        if form == "text" and enrolment.text is not None:
            return Response(self._text(request, user, reply, enrolment.text), 201,
                            media_type="text/plain; charset=utf-8",
                            headers={"cache-control": "no-store", **vary})
        return answer(factor.enrolled, reply, 201, headers=vary)

    async def _start_enrolment(self, user: str, factor: Factor, record: FactorRecord,
                               challenge_id: str) -> Started:
        """Start the enrolment's challenge. A code sent to an address being enrolled counts
        against ``enrolment_sends_per_window``, not the challenge sends (docs/configuration.md,
        Throttling); a failed delivery is not counted and creates nothing."""
        ctx = self.ctx
        if not factor.delivers:
            return await factor.start(user, [record], challenge_id)
        await ctx.regulator.start_send(user, enrolment=True)
        try:
            started = await factor.start(user, [record], challenge_id)
        except Problem:
            await ctx.regulator.give_back_send(user, enrolment=True)
            await ctx.audit.emit("delivery_failed", user=user, factor=factor.type)
            raise
        await ctx.audit.emit("code_sent", user=user, factor=factor.type,
                             factor_id=started.factor_id, enrolment=True)
        return started

    def _origin(self, request: Request) -> str:
        """The gateway as the client reached it, for a command to copy: behind a trusted
        proxy (TLS terminated in front), its X-Forwarded-Proto and -Host."""
        scheme = request.scope.get("scheme", "http")
        host = request.headers.get("host", "")
        client = request.scope.get("client")
        trusted = self.ctx.settings.trusted_proxies
        if client and trusted:
            try:
                peer = ipaddress.ip_address(client[0])
            except ValueError:
                peer = None
            if peer is not None and any(peer in net for net in trusted):
                proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
                forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
                scheme = proto.lower() if proto.lower() in ("http", "https") else scheme
                host = forwarded if _HOST.fullmatch(forwarded) else host
        return f"{scheme}://{host}" if _HOST.fullmatch(host) else "GATEWAY"

    def _text(self, request: Request, user: str, reply: dict[str, Any], shown: str) -> str:
        """The terminal form of an enrolment: the factor's own text, then the factor id and
        the command that confirms it."""
        login = ""
        if self.ctx.settings.basic is not None:
            # curl asks for the password; a name that cannot be printed is left to fill in
            login = f"-u {shlex.quote(user) if user.isprintable() else 'USER'} "
        return (f"{shown}\n"
                f"Factor id:    {reply['id']} ({reply['label']}, pending until confirmed)\n\n"
                "Confirm it, with the code the app shows now in place of 123456:\n\n"
                f"  curl {login}-X POST -H 'Content-Type: application/json' \\\n"
                f"       -d '{{\"code\": \"123456\"}}' {self._origin(request)}{reply['confirm_uri']}\n")

    async def confirm(self, request: Request) -> Response:
        ctx = self.ctx
        user = await user_of(ctx, request)
        proof = await parse(request, ConfirmAnswer)
        fid = request.path_params["factor_id"]
        await ctx.regulator.check(user)
        records = await ctx.store.factors(user)
        record = next((r for r in records if r.id == fid), None)
        factor = ctx.factors.get(record.type) if record is not None else None
        if record is None or factor is None:
            raise not_found()
        if record.status != "pending":
            raise Problem("already-active")
        now = ctx.clock()
        ch = await ctx.store.challenge(enrol_challenge_id(fid))
        if ch is not None and ch.user != user:
            ch = None
        if ch is not None and (ch.state != "pending" or ch.expires_at < now):
            raise Problem("challenge-gone", detail="enrol the factor again for a new code")
        result = outcome(await factor.confirm(record, ch, proof.mapping(), now))
        ok = result.ok
        if ok and ch is not None:
            ok = await ctx.store.verify_challenge(ch.id)  # single use
        if not ok and result.reused:
            # A replay, not a guess: refused without spending an attempt (docs/protocol.md).
            await ctx.audit.emit("code_reused", user=user, factor=record.type, factor_id=fid,
                                 action="confirm")
            raise code_reused(ch.attempts_left if ch is not None else None)
        if not ok:
            left = await ctx.store.fail_challenge(ch.id) if ch is not None else None
            await ctx.regulator.failure(user, factor=record.type, factor_id=fid, action="confirm")
            if left is None:
                raise Problem("wrong-code", detail="the code is not valid")
            if left <= 0:
                raise Problem("challenge-gone", detail="too many wrong codes; enrol the factor again")
            raise Problem("wrong-code", detail="the code is not valid", attempts_left=left)
        first = not any(r.status == "active" and r.id != fid for r in records)
        await ctx.store.activate_factor(user, fid)
        await ctx.regulator.success(user)
        await ctx.audit.emit("factor_confirmed", user=user, factor=record.type, factor_id=fid)
        doc: dict[str, Any] = {"id": fid, "type": record.type, "status": "active"}
        what = f"a second factor ({record.type}, {record.label}) was added"
        # After the factor is active, never before: codes nobody saw would make the account
        # need a manage token for its next change, which nobody could then get.
        codes = await self._first_recovery_codes(user, fid, now) if first else None
        if codes:
            doc["recovery_codes"] = codes
            what += " with a first set of recovery codes"
        self.notify(user, what)
        return answer(Confirmed, doc)

    async def _first_recovery_codes(self, user: str, fid: str, now: float) -> list[str] | None:
        """A first set of recovery codes with the user's first factor: the moment the user
        is at the screen and can keep them, before the one factor can be lost. None when
        the user has some already."""
        ctx = self.ctx
        recovery = ctx.factors.get("recovery")
        if recovery is None or await ctx.store.recovery_codes_left(user) > 0:
            return None
        enrolment = await recovery.enrol(user, "", {}, now)
        codes = [str(c) for c in enrolment.reply.get("codes", [])]
        await ctx.audit.emit("recovery_codes_issued", user=user, count=len(codes),
                             with_factor=fid)
        return codes

    async def delete_factor(self, request: Request) -> Response:
        ctx = self.ctx
        fid = request.path_params["factor"]
        user, _doc, records = await self.managed(request)
        extra: tuple[str, ...] = ()
        if fid == "recovery":
            if await ctx.store.recovery_codes_left(user) == 0:
                raise not_found()
            await self.revoke_tokens(user)
            await ctx.store.replace_recovery_codes(user, [], ctx.clock())
            what = "your recovery codes were removed"
        else:
            record = next((r for r in records if r.id == fid), None)
            if record is None:
                raise not_found()
            await self.revoke_tokens(user)
            if not await ctx.store.delete_factor(user, fid):
                raise not_found()
            if record.type == ctx.settings.notify_channel and record.status == "active":
                # the removed address hears of its own removal too
                extra = (ctx.channels[record.type].address_of(record),)
            what = f"a second factor ({record.type}, {record.label}) was removed"
        await self.commit(request)
        await ctx.audit.emit("factor_removed", user=user, factor_id=fid)
        self.notify(user, what, extra)
        return Response(status_code=204, headers={"cache-control": "no-store"})
