"""Self-service: enrol, confirm and remove factors, regenerate recovery codes; every change
after the first factor needs a `stepgate:manage` token and is announced out of band."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.decision.paths import CanonicalPath
from gateway.decision.tokens import Bound, token_fits
from gateway.factors import new_codes
from gateway.factors.delivered import DeliveredFactor, mask, seal_address, valid_address
from gateway.factors.recovery import code_hash, normalise
from gateway.factors.totp import matching_step, new_secret, otpauth_uri, qr_svg, seal
from gateway.http.wire import JSON_LIMIT, Receive, Scope, Send, field, header, read_body, read_json, send_json
from gateway.problems import Problem, bad_request, not_found
from gateway.store import ChallengeRecord, FactorRecord

if TYPE_CHECKING:
    from gateway.api.handshake import Endpoints

log = logging.getLogger("stepgate")
LABEL_MAX = 64
RESERVATION = "stepgate.reservation"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public(r: FactorRecord) -> dict[str, Any]:
    return {"id": r.id, "type": r.type, "status": r.status, "label": r.label,
            "created_at": _iso(r.created_at), "last_used_at": _iso(r.last_used_at)}


def enrol_challenge_id(factor_id: str) -> str:
    return f"e_{factor_id}"


class SelfService:
    def __init__(self, ep: Endpoints) -> None:
        self.ep = ep
        self.ctx = ep.ctx

    # ------------------------------------------------------------ step-up

    async def _has_active(self, user: str) -> tuple[list[FactorRecord], bool]:
        ctx = self.ctx
        records = await ctx.store.factors(user)
        active = any(r.status == "active" for r in records)
        if not active:
            active = await ctx.store.recovery_codes_left(user) > 0
        return records, active

    async def step_up(self, scope: Scope, cp: CanonicalPath, user: str, body: bytes,
                      active: bool) -> None:
        """Changes need a `stepgate:manage` token once the user has a factor."""
        ctx = self.ctx
        if not active:
            if ctx.settings.enrollment == "admin":
                raise Problem("enrollment-closed",
                              detail="an administrator enrols the first factor of an account")
            return
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
        scope[RESERVATION] = token.jti  # released by the dispatcher unless committed

    async def managed(self, scope: Scope, receive: Receive, cp: CanonicalPath
                      ) -> tuple[str, dict[str, Any], list[FactorRecord]]:
        user = await self.ep.user(scope)
        body = await read_body(receive, scope["headers"], JSON_LIMIT)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}
        doc = await read_json(replay, scope["headers"], limit=JSON_LIMIT, optional=True)
        records, active = await self._has_active(user)
        await self.step_up(scope, cp, user, body, active)
        return user, doc, records

    async def commit(self, scope: Scope) -> None:
        ctx = self.ctx
        jti = scope.pop(RESERVATION, None)
        if jti is not None:
            await ctx.uses.settle(jti, "success")

    async def revoke_tokens(self, user: str) -> None:
        """Before a factor goes: the user's outstanding tokens stop working (SPEC §7)."""
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
        deliverer = ctx.deliverers[name]

        async def run() -> None:
            try:
                records = await ctx.store.factors(user)
                channel = ctx.channels[name]
                addresses = {channel.address_of(r) for r in records
                             if r.type == name and r.status == "active"}
                addresses.update(extra_addresses)
                issuer = ctx.settings.totp_issuer
                for address in sorted(addresses):
                    await deliverer.send(address, f"{issuer}: {what} on your account. If this "
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

    async def list_factors(self, scope: Scope, receive: Receive, send: Send,
                           cp: CanonicalPath) -> None:
        ctx = self.ctx
        user = await self.ep.user(scope)
        records = await ctx.store.factors(user)
        out = [public(r) for r in records]
        left = await ctx.store.recovery_codes_left(user)
        if left:
            out.append({"id": "recovery", "type": "recovery", "status": "active",
                        "label": "recovery codes", "remaining": left})
        await send_json(send, 200, {"factors": out})

    async def enrol_totp(self, scope: Scope, receive: Receive, send: Send,
                         cp: CanonicalPath) -> None:
        ctx = self.ctx
        user, doc, _records = await self.managed(scope, receive, cp)
        label = field(doc, "label", required=False, max_len=LABEL_MAX) or "authenticator"
        secret = new_secret()
        fid = "f_" + secrets.token_urlsafe(12)
        uri = otpauth_uri(secret, user, ctx.settings.totp_issuer)
        svg = qr_svg(uri)
        await ctx.store.add_factor(FactorRecord(
            id=fid, user=user, type="totp", status="pending", label=label,
            secret=seal(ctx.keys, user, fid, secret), created_at=ctx.clock()))
        await self.commit(scope)
        await ctx.audit.emit("factor_added", user=user, factor="totp", factor_id=fid,
                            status="pending")
        await send_json(send, 201, {"id": fid, "type": "totp", "status": "pending",
                                    "label": label, "secret": secret, "otpauth_uri": uri,
                                    "qr_svg": svg,
                                    "confirm_uri": f"{ctx.prefix}/factors/{fid}/confirm"})

    async def enrol_channel(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                            channel: str) -> None:
        ctx = self.ctx
        factor = ctx.factors.get(channel)
        if not isinstance(factor, DeliveredFactor):
            raise Problem("unknown-factor", detail="no such delivered-code channel; GET "
                          f"{ctx.prefix}/config lists them", factors=list(ctx.factors))
        user, doc, _records = await self.managed(scope, receive, cp)
        address = field(doc, "address", max_len=256)
        assert address is not None
        if not valid_address(factor.ch.address, address):
            expected = {"e164": "a phone number in E.164 form like +33612345678",
                        "email": "an e-mail address"}.get(factor.ch.address, "an address")
            raise bad_request(f"expected {expected}", "invalid-address")
        fid = "f_" + secrets.token_urlsafe(12)
        now = ctx.clock()
        record = FactorRecord(id=fid, user=user, type=channel, status="pending",
                              label=mask(address),
                              secret=seal_address(ctx.keys, user, fid, address), created_at=now)
        cid = enrol_challenge_id(fid)
        # Deliver first: a failed delivery creates nothing and uses up nothing (SPEC §8).
        digest = await self.ep.deliver(user, factor, record, cid)
        await ctx.store.add_factor(record)
        await ctx.store.add_challenge(ChallengeRecord(
            id=cid, user=user, ticket_nonce=f"enrol:{fid}", ticket="", factor=channel,
            factor_id=fid, state="pending",
            attempts_left=ctx.settings.throttle.challenge_attempts, created_at=now,
            expires_at=now + factor.ch.ttl, ticket_expires_at=now + factor.ch.ttl,
            code_hash=digest, sent_at=now))
        await self.commit(scope)
        await ctx.audit.emit("factor_added", user=user, factor=channel, factor_id=fid,
                            status="pending")
        await send_json(send, 201, {"id": fid, "type": channel, "status": "pending",
                                    "label": record.label, "hint": f"Code sent to {record.label}",
                                    "expires_in": int(factor.ch.ttl),
                                    "confirm_uri": f"{ctx.prefix}/factors/{fid}/confirm"})

    async def confirm(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                      fid: str) -> None:
        ctx = self.ctx
        user = await self.ep.user(scope)
        doc = await read_json(receive, scope["headers"], limit=JSON_LIMIT)
        code = field(doc, "code", max_len=64)
        assert code is not None
        await ctx.regulator.check(user)
        records = await ctx.store.factors(user)
        record = next((r for r in records if r.id == fid), None)
        if record is None:
            raise not_found()
        if record.status != "pending":
            raise Problem("already-active")
        now = ctx.clock()
        factor = ctx.factors.get(record.type)
        if isinstance(factor, DeliveredFactor):
            ch = await ctx.store.challenge(enrol_challenge_id(fid))
            if ch is None or ch.state != "pending" or ch.expires_at < now:
                raise Problem("challenge-gone", detail="enrol the address again for a new code")
            ok = factor.check(ch, code) and await ctx.store.verify_challenge(ch.id)
            if not ok:
                left = await ctx.store.fail_challenge(ch.id)
                await ctx.regulator.failure(user, factor=record.type, factor_id=fid,
                                            action="confirm")
                if left <= 0:
                    raise Problem("challenge-gone", detail="too many wrong codes; enrol the address again")
                raise Problem("wrong-code", detail="the code is not valid",
                              attempts_left=left)
        else:
            step = matching_step(ctx.factors["totp"].secret_of(record), code, now)  # type: ignore[attr-defined]
            if step is None or not await ctx.store.advance_step(record.id, step, now):
                await ctx.regulator.failure(user, factor=record.type, factor_id=fid,
                                            action="confirm")
                raise Problem("wrong-code", detail="the code is not valid")
        await ctx.store.activate_factor(user, fid)
        await ctx.regulator.success(user)
        await ctx.audit.emit("factor_confirmed", user=user, factor=record.type, factor_id=fid)
        self.notify(user, f"a second factor ({record.type}, {record.label}) was added")
        await send_json(send, 200, {"id": fid, "type": record.type, "status": "active"})

    async def delete_factor(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                            fid: str) -> None:
        ctx = self.ctx
        user, _doc, records = await self.managed(scope, receive, cp)
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
        await self.commit(scope)
        await ctx.audit.emit("factor_removed", user=user, factor_id=fid)
        self.notify(user, what, extra)
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    async def recovery_codes(self, scope: Scope, receive: Receive, send: Send,
                             cp: CanonicalPath) -> None:
        ctx = self.ctx
        user, _doc, _records = await self.managed(scope, receive, cp)
        codes = new_codes(ctx.settings.recovery_count)
        hashes = [code_hash(user, normalise(c) or "") for c in codes]
        await ctx.store.replace_recovery_codes(user, hashes, ctx.clock())
        await self.commit(scope)
        await ctx.audit.emit("recovery_codes_regenerated", user=user, count=len(codes))
        self.notify(user, "new recovery codes were generated (the old ones no longer work)")
        await send_json(send, 201, {"codes": codes, "count": len(codes)})
