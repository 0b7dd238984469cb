"""The gateway's own endpoints under the prefix: challenges, verification, self-service."""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from .factors import new_codes
from .factors.recovery import code_hash, normalise
from .factors.totp import matching_step, new_secret, otpauth_uri, qr_svg, seal
from .paths import CanonicalPath
from .policies import Rule
from .problems import Headers, Problem, bad_request
from .store import ChallengeRecord, FactorRecord
from .tokens import Bound, Ticket, token_fits
from .wire import Receive, Scope, Send, field, header, read_body, read_json, send_json

if TYPE_CHECKING:
    from .app import Gateway

_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}\Z")
_LABEL_MAX = 64
JSON_LIMIT = 16 * 1024


def not_found() -> Problem:
    return Problem(404, "not-found", "Not found")


def unauthenticated(gw: Gateway) -> Problem:
    headers: Headers = []
    if gw.identity is not None and gw.identity.challenge:
        headers.append((b"www-authenticate", gw.identity.challenge))
    return Problem(401, "unauthenticated", "Authentication required",
                   detail="send the same credentials as for the protected request",
                   headers=headers)


def invalid_ticket() -> Problem:
    return bad_request("the ticket is invalid, expired or not yours; repeat the original "
                       "request for a fresh one", "invalid-ticket")


def locked(retry_after: float | None) -> Problem:
    headers: Headers = []
    extra: dict[str, Any] = {}
    if retry_after is not None:
        seconds = max(1, int(retry_after + 0.999))
        headers.append((b"retry-after", str(seconds).encode()))
        extra["retry_after"] = seconds
    return Problem(429, "locked", "Too many failed attempts",
                   detail="second-factor attempts for this account are paused"
                   if retry_after is not None else
                   "second-factor attempts for this account are locked until an administrator "
                   "unlocks it", headers=headers, **extra)


class Endpoints:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.routes: list[tuple[re.Pattern[str], dict[str, Any]]] = [
            (re.compile(r"^/config\Z"), {"GET": self.config}),
            (re.compile(r"^/challenges\Z"), {"POST": self.create_challenge}),
            (re.compile(r"^/challenges/([^/]+)\Z"), {"GET": self.challenge_state}),
            (re.compile(r"^/challenges/([^/]+)/verify\Z"), {"POST": self.verify}),
            (re.compile(r"^/factors\Z"), {"GET": self.list_factors}),
            (re.compile(r"^/factors/totp\Z"), {"POST": self.enrol_totp}),
            (re.compile(r"^/factors/([^/]+)/confirm\Z"), {"POST": self.confirm}),
            (re.compile(r"^/factors/([^/]+)\Z"), {"DELETE": self.delete_factor}),
            (re.compile(r"^/recovery-codes\Z"), {"POST": self.recovery_codes}),
        ]

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
        rest = cp.decoded[len(self.gw.prefix):] or "/"
        if rest.endswith("/") and rest != "/":
            rest = rest[:-1]
        for rx, methods in self.routes:
            m = rx.match(rest)
            if m is None:
                continue
            handler = methods.get(scope["method"])
            if handler is None:
                allow = ", ".join(methods).encode()
                raise Problem(405, "method-not-allowed", "Method not allowed",
                              headers=[(b"allow", allow)])
            async def tracking_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    scope["stepgate.started"] = True
                await send(message)

            try:
                await handler(scope, receive, tracking_send, cp, *m.groups())
            finally:
                jti = scope.pop("stepgate.reservation", None)
                if jti is not None:  # the change failed: the token may be used again
                    await self.gw.store.release_use(jti)
            return
        raise not_found()

    # ---------------------------------------------------------------- helpers

    async def user(self, scope: Scope) -> str:
        user = await self.gw.identify(scope)
        if user is None:
            raise unauthenticated(self.gw)
        return user

    async def check_lock(self, user: str) -> None:
        lock = await self.gw.store.user_lock(user)
        if lock.hard:
            raise locked(None)
        now = self.gw.clock()
        if lock.locked_until > now:
            raise locked(lock.locked_until - now)

    def requirement_rule(self, name: str) -> Rule | None:
        if name == self.gw.manage_rule.name:
            return self.gw.manage_rule
        return self.gw.policy.by_name.get(name)

    async def failure(self, user: str, **audit: Any) -> None:
        """Count a wrong code against the user; answers 429 once the user is locked."""
        t = self.gw.settings.throttle
        now = self.gw.clock()
        lock = await self.gw.store.record_failure(user, now, t.lock_after, t.lock_base, t.lock_max,
                                                  t.hard_lock_after)
        await self.gw.audit.emit("failed", user=user, failures=lock.failures, **audit)
        if lock.hard or lock.locked_until > now:
            await self.gw.audit.emit("locked", user=user, hard=lock.hard,
                                     until=None if lock.hard else round(lock.locked_until))
            raise locked(None if lock.hard else lock.locked_until - now)

    # ---------------------------------------------------------------- config

    async def config(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
        gw = self.gw
        await send_json(send, 200, {
            "factors": list(gw.factors), "token_header": gw.settings.token_header,
            "prefix": gw.prefix, "enrollment": gw.settings.enrollment,
        }, no_store=False)

    # ---------------------------------------------------------------- challenges

    async def create_challenge(self, scope: Scope, receive: Receive, send: Send,
                               cp: CanonicalPath) -> None:
        gw = self.gw
        user = await self.user(scope)
        doc = await read_json(receive, scope["headers"], limit=JSON_LIMIT)
        raw_ticket = field(doc, "ticket")
        wanted = field(doc, "factor", required=False, max_len=64)
        now = gw.clock()
        assert raw_ticket is not None
        ticket = gw.signer.read_ticket(raw_ticket, now)
        if ticket is None or ticket.user not in ("", user):
            raise invalid_ticket()
        rule = self.requirement_rule(ticket.rule)
        if rule is None or rule.require is None or rule.require.binding != ticket.binding:
            raise invalid_ticket()
        await self.check_lock(user)
        t = gw.settings.throttle
        if await gw.store.hit(f"challenges:{user}", t.challenge_window, now) > t.challenges_per_window:
            raise Problem(429, "too-many-challenges", "Too many challenges",
                          detail="too many challenges were requested for this account; wait "
                          "and retry", headers=[(b"retry-after", str(int(t.challenge_window)).encode())])
        req = rule.require
        records = await gw.store.factors(user)
        left = await gw.store.recovery_codes_left(user)
        available = [f for f in req.factors if f in gw.factors and
                     gw.factors[f].available(records, left)]
        if wanted is not None:
            if wanted not in req.factors:
                raise bad_request(f"this rule accepts {', '.join(req.factors)}, not '{wanted}'",
                                  "factor-not-allowed")
            if wanted not in available:
                raise gw.not_enrolled(req)
            factor = wanted
        else:
            done = await gw.store.verified_factors(user, ticket.nonce) if req.all_of else set()
            choices = [f for f in available if f not in done]
            if not choices:
                raise gw.not_enrolled(req)
            factor = choices[0]
        started = await gw.factors[factor].start(user, records)
        cid = secrets.token_urlsafe(18)
        ttl = gw.settings.challenge_ttl
        await gw.store.add_challenge(ChallengeRecord(
            id=cid, user=user, ticket_nonce=ticket.nonce, ticket=raw_ticket, factor=factor,
            factor_id=started.factor_id, state="pending", attempts_left=t.challenge_attempts,
            created_at=now, expires_at=now + ttl, ticket_expires_at=ticket.expires,
            code_hash=started.code_hash, sent_at=None))
        await gw.audit.emit("challenge_created", user=user, rule=rule.name, factor=factor)
        body = {"challenge_id": cid, "factor": factor, "expires_in": int(ttl),
                "attempts_left": t.challenge_attempts,
                "verify_uri": f"{gw.prefix}/challenges/{cid}/verify"}
        body.update(started.extra)
        await send_json(send, 201, body, headers=[(b"location", f"{gw.prefix}/challenges/{cid}".encode())])

    async def _own_challenge(self, user: str, cid: str) -> ChallengeRecord:
        ch = await self.gw.store.challenge(cid) if _ID.match(cid) else None
        if ch is None or ch.user != user:
            raise not_found()  # unknown and foreign ids look the same (SPEC §3.3)
        return ch

    def _state(self, ch: ChallengeRecord) -> str:
        if ch.state == "pending" and ch.expires_at < self.gw.clock():
            return "expired"
        return ch.state

    async def challenge_state(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                              cid: str) -> None:
        user = await self.user(scope)
        ch = await self._own_challenge(user, cid)
        await send_json(send, 200, {
            "challenge_id": ch.id, "factor": ch.factor, "state": self._state(ch),
            "attempts_left": ch.attempts_left,
            "expires_in": max(0, int(ch.expires_at - self.gw.clock()))})

    async def verify(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                     cid: str) -> None:
        gw = self.gw
        user = await self.user(scope)
        doc = await read_json(receive, scope["headers"], limit=JSON_LIMIT)
        code = field(doc, "code", max_len=64)
        assert code is not None
        ch = await self._own_challenge(user, cid)
        await self.check_lock(user)
        now = gw.clock()
        state = self._state(ch)
        if state != "pending":
            raise Problem(410, "challenge-gone", "Challenge no longer usable",
                          detail=f"the challenge is {state}; request a new one", state=state)
        ticket = gw.signer.read_ticket(ch.ticket, now)
        rule = self.requirement_rule(ticket.rule) if ticket else None
        if ticket is None or rule is None or rule.require is None:
            raise Problem(410, "challenge-gone", "Challenge no longer usable",
                          detail="the challenge's ticket has expired; repeat the original request",
                          state="expired")
        records = await gw.store.factors(user)
        result = await gw.factors[ch.factor].verify(user, ch, records, code, now)
        if not result.ok:
            left = await gw.store.fail_challenge(ch.id)
            await self.failure(user, rule=rule.name, factor=ch.factor, challenge_left=left)
            if left <= 0:
                raise Problem(410, "challenge-gone", "Challenge no longer usable",
                              detail="too many wrong codes; request a new challenge",
                              state="failed", attempts_left=0)
            raise Problem(403, "wrong-code", "Wrong code", detail="the code is not valid",
                          attempts_left=left)
        if not await gw.store.verify_challenge(ch.id):
            raise Problem(410, "challenge-gone", "Challenge no longer usable",
                          detail="the challenge was already used", state="verified")
        await gw.store.reset_failures(user)
        await gw.audit.emit("verified", user=user, rule=rule.name, factor=ch.factor)
        req = rule.require
        factors: tuple[str, ...] = (ch.factor,)
        if req.all_of:
            done = await gw.store.verified_factors(user, ticket.nonce)
            remaining = [f for f in req.factors if f not in done]
            if remaining:
                await send_json(send, 200, {"status": "verified", "remaining": remaining,
                                            "challenge_uri": f"{gw.prefix}/challenges"})
                return
            factors = tuple(f for f in req.factors if f in done)
        minted = gw.signer.token(ticket=Ticket(ticket.nonce, user, ticket.rule, ticket.binding,
                                               ticket.expires, ticket.bound),
                                 scope=req.scope, factors=factors, verified_at=now, now=now,
                                 ttl=req.ttl, uses=req.uses)
        await gw.audit.emit("token_issued", user=user, rule=rule.name, binding=req.binding,
                            factors=list(factors))
        await send_json(send, 200, {
            "token": gw.signer.dump_token(minted), "token_header": gw.settings.token_header,
            "expires_in": int(req.ttl), "binding": req.binding, "uses": req.uses or None,
            "status": "verified"})

    # ---------------------------------------------------------------- self-service

    async def _has_active(self, user: str) -> tuple[list[FactorRecord], bool]:
        records = await self.gw.store.factors(user)
        active = any(r.status == "active" for r in records)
        if not active:
            active = await self.gw.store.recovery_codes_left(user) > 0
        return records, active

    async def step_up(self, scope: Scope, cp: CanonicalPath, user: str, body: bytes,
                      active: bool) -> str | None:
        """Changes need a `stepgate:manage` token once the user has a factor; returns its jti."""
        gw = self.gw
        if not active:
            if gw.settings.enrollment == "admin":
                raise Problem(403, "enrollment-closed", "Enrolment closed",
                              detail="an administrator enrols the first factor of an account")
            return None
        rule = gw.manage_rule
        assert rule.require is not None
        bound = Bound.of(scope["method"], cp.raw, scope.get("query_string", b""), body) \
            if rule.require.binding == "request" else None
        value = header(scope["headers"], gw.token_header)
        now = gw.clock()
        token = gw.signer.read_token(value.decode("latin-1"), now) if value else None
        reason = None
        if token is not None:
            reason = token_fits(token, rule, user, bound, now)
        if token is None or reason is not None:
            raise gw.challenge(rule, user, bound, detail=reason)
        if token.uses == 0:
            return None
        result = await gw.store.reserve_use(token.jti, token.uses, token.expires, now, hold=30)
        if result == "busy":
            raise Problem(409, "token-in-use", "Token in use")
        if result == "used":
            raise gw.challenge(rule, user, bound, detail="token already used")
        return token.jti

    async def _managed(self, scope: Scope, receive: Receive, cp: CanonicalPath,
                       optional: bool = True) -> tuple[str, dict[str, Any], list[FactorRecord], str | None]:
        user = await self.user(scope)
        body = await read_body(receive, scope["headers"], JSON_LIMIT)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}
        doc = await read_json(replay, scope["headers"], limit=JSON_LIMIT, optional=optional)
        records, active = await self._has_active(user)
        jti = await self.step_up(scope, cp, user, body, active)
        if jti is not None:
            scope["stepgate.reservation"] = jti
        return user, doc, records, jti

    async def list_factors(self, scope: Scope, receive: Receive, send: Send,
                           cp: CanonicalPath) -> None:
        user = await self.user(scope)
        records = await self.gw.store.factors(user)
        out = [self._public(r) for r in records]
        left = await self.gw.store.recovery_codes_left(user)
        if left:
            out.append({"id": "recovery", "type": "recovery", "status": "active",
                        "label": "recovery codes", "remaining": left})
        await send_json(send, 200, {"factors": out})

    @staticmethod
    def _public(r: FactorRecord) -> dict[str, Any]:
        from datetime import datetime, timezone

        def iso(t: float | None) -> str | None:
            return None if t is None else datetime.fromtimestamp(t, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
        return {"id": r.id, "type": r.type, "status": r.status, "label": r.label,
                "created_at": iso(r.created_at), "last_used_at": iso(r.last_used_at)}

    async def enrol_totp(self, scope: Scope, receive: Receive, send: Send,
                         cp: CanonicalPath) -> None:
        gw = self.gw
        user, doc, _records, jti = await self._managed(scope, receive, cp)
        label = field(doc, "label", required=False, max_len=_LABEL_MAX) or "authenticator"
        secret = new_secret()
        fid = "f_" + secrets.token_urlsafe(12)
        uri = otpauth_uri(secret, user, gw.settings.totp_issuer)
        svg = qr_svg(uri)
        await gw.store.add_factor(FactorRecord(
            id=fid, user=user, type="totp", status="pending", label=label,
            secret=seal(gw.keys, user, fid, secret), created_at=gw.clock()))
        await self._commit(scope, jti)
        await gw.audit.emit("factor_added", user=user, factor="totp", factor_id=fid,
                            status="pending")
        await send_json(send, 201, {"id": fid, "type": "totp", "status": "pending",
                                    "label": label, "secret": secret, "otpauth_uri": uri,
                                    "qr_svg": svg,
                                    "confirm_uri": f"{gw.prefix}/factors/{fid}/confirm"})

    async def _commit(self, scope: Scope, jti: str | None) -> None:
        if jti is not None:
            scope.pop("stepgate.reservation", None)
            await self.gw.store.commit_use(jti)

    async def confirm(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                      fid: str) -> None:
        gw = self.gw
        user = await self.user(scope)
        doc = await read_json(receive, scope["headers"], limit=JSON_LIMIT)
        code = field(doc, "code", max_len=64)
        assert code is not None
        await self.check_lock(user)
        records = await gw.store.factors(user)
        record = next((r for r in records if r.id == fid), None)
        if record is None:
            raise not_found()
        if record.status != "pending":
            raise Problem(409, "already-active", "Factor already active")
        now = gw.clock()
        totp = gw.factors["totp"]
        ok = False
        if record.type == "totp":
            step = matching_step(totp.secret_of(record), code, now)  # type: ignore[attr-defined]
            ok = step is not None and await gw.store.advance_step(record.id, step, now)
        if not ok:
            await self.failure(user, factor=record.type, factor_id=fid, action="confirm")
            raise Problem(403, "wrong-code", "Wrong code", detail="the code is not valid")
        await gw.store.activate_factor(user, fid)
        await gw.store.reset_failures(user)
        await gw.audit.emit("factor_confirmed", user=user, factor=record.type, factor_id=fid)
        await send_json(send, 200, {"id": fid, "type": record.type, "status": "active"})

    async def delete_factor(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                            fid: str) -> None:
        gw = self.gw
        user, _doc, records, jti = await self._managed(scope, receive, cp)
        if fid == "recovery":
            if await gw.store.recovery_codes_left(user) == 0:
                raise not_found()
            await gw.store.replace_recovery_codes(user, [], gw.clock())
        elif not any(r.id == fid for r in records) or not await gw.store.delete_factor(user, fid):
            raise not_found()
        await self._commit(scope, jti)
        await gw.audit.emit("factor_removed", user=user, factor_id=fid)
        await self._no_content(send)

    @staticmethod
    async def _no_content(send: Send) -> None:
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    async def recovery_codes(self, scope: Scope, receive: Receive, send: Send,
                             cp: CanonicalPath) -> None:
        gw = self.gw
        user, _doc, _records, jti = await self._managed(scope, receive, cp)
        codes = new_codes(gw.settings.recovery_count)
        hashes = [code_hash(user, normalise(c) or "") for c in codes]
        await gw.store.replace_recovery_codes(user, hashes, gw.clock())
        await self._commit(scope, jti)
        await gw.audit.emit("recovery_codes_regenerated", user=user, count=len(codes))
        await send_json(send, 201, {"codes": codes, "count": len(codes)})
