"""The admin API: a bearer key from the environment or a file; no key, no admin API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from gateway.api.selfservice import public
from gateway.decision.paths import CanonicalPath
from gateway.http.wire import Receive, Scope, Send, header, send_json
from gateway.primitives import same_secret
from gateway.problems import Problem, bad_request, not_found

if TYPE_CHECKING:
    from gateway.api.handshake import Endpoints

def _time(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise bad_request(f"expected '{name}' as epoch seconds or ISO 8601, found {value!r}",
                          "invalid-query") from None


class Admin:
    def __init__(self, ep: Endpoints) -> None:
        self.ep = ep
        self.ctx = ep.ctx

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Any]]]:
        return [
            (re.compile(r"^/admin/users/([^/]+)/factors\Z"), {"GET": self.user_factors,
                                                              "DELETE": self.reset}),
            (re.compile(r"^/admin/users/([^/]+)/unlock\Z"), {"POST": self.unlock}),
            (re.compile(r"^/admin/audit\Z"), {"GET": self.audit}),
        ]

    def authorize(self, scope: Scope) -> None:
        key = self.ctx.admin_key
        if key is None:
            raise not_found()  # the admin API is off
        value = header(scope["headers"], b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        ok = scheme.lower() == b"bearer" and same_secret(given.strip(), key)
        if not ok:
            raise Problem("unauthenticated",
                          headers=[(b"www-authenticate", b'Bearer realm="stepgate-admin"')])

    async def user_factors(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                           user: str) -> None:
        ctx = self.ctx
        self.authorize(scope)
        store = ctx.store
        lock = await store.user_lock(user)
        now = ctx.clock()
        await send_json(send, 200, {
            "user": user, "factors": [public(r) for r in await store.factors(user)],
            "recovery_codes_left": await store.recovery_codes_left(user),
            "failures": lock.failures, "hard_locked": lock.hard,
            "locked_for": max(0, int(lock.locked_until - now)) if not lock.hard else None})

    async def reset(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                    user: str) -> None:
        ctx = self.ctx
        self.authorize(scope)
        removed = await ctx.store.delete_user(user)  # revokes the user's tokens too
        ctx.decider.forget_generation(user)
        await ctx.audit.emit("admin_reset", user=user, removed=removed)
        await send_json(send, 200, {"user": user, "removed": removed})

    async def unlock(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                     user: str) -> None:
        ctx = self.ctx
        self.authorize(scope)
        await ctx.store.unlock(user)  # revokes the user's tokens too
        ctx.decider.forget_generation(user)
        await ctx.audit.emit("admin_unlocked", user=user)
        await send_json(send, 200, {"user": user, "locked": False})

    async def audit(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
        ctx = self.ctx
        self.authorize(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        unknown = set(query) - {"user", "since", "until", "limit"}
        if unknown:
            raise bad_request(f"unknown query parameter {sorted(unknown)[0]!r}; expected user, "
                              "since, until, limit", "invalid-query")
        since = _time(query["since"], "since") if "since" in query else None
        until = _time(query["until"], "until") if "until" in query else None
        raw_limit = query.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            raise bad_request("expected 'limit' between 1 and 1000", "invalid-query")
        events = await ctx.store.audit(query.get("user"), since, until, int(raw_limit))
        await send_json(send, 200, {"events": events})
