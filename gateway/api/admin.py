"""The admin API: a bearer key from the environment or a file; no key, no admin API."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.bodies import parse
from gateway.api.common import answer
from gateway.api.context import Context
from gateway.api.models import AuditEvents, NoOptions, UserFactors, UserReset, UserUnlocked
from gateway.api.selfservice import public
from gateway.primitives import same_secret
from gateway.problems import Problem, bad_request, not_found

AUDIT_QUERY = ("user", "since", "until", "limit")


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
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def authorize(self, request: Request) -> None:
        key = self.ctx.admin_key
        if key is None:
            raise not_found()  # the admin API is off
        value = request.headers.get("authorization", "").encode("latin-1")
        scheme, _, given = value.partition(b" ")
        ok = scheme.lower() == b"bearer" and same_secret(given.strip(), key)
        if not ok:
            raise Problem("unauthenticated",
                          headers=[(b"www-authenticate", b'Bearer realm="stepgate-admin"')])

    async def user_factors(self, request: Request) -> Response:
        ctx = self.ctx
        self.authorize(request)
        user = request.path_params["user"]
        store = ctx.store
        lock = await store.user_lock(user)
        now = ctx.clock()
        return answer(UserFactors, {
            "user": user, "factors": [public(r) for r in await store.factors(user)],
            "recovery_codes_left": await store.recovery_codes_left(user),
            "failures": lock.failures, "hard_locked": lock.hard,
            "locked_for": max(0, int(lock.locked_until - now)) if not lock.hard else None})

    async def reset(self, request: Request) -> Response:
        ctx = self.ctx
        self.authorize(request)
        user = request.path_params["user"]
        removed = await ctx.store.delete_user(user)  # revokes the user's tokens too
        ctx.decider.forget_generation(user)
        await ctx.audit.emit("admin_reset", user=user, removed=removed)
        return answer(UserReset, {"user": user, "removed": removed})

    async def unlock(self, request: Request) -> Response:
        ctx = self.ctx
        self.authorize(request)
        await parse(request, NoOptions, optional=True)
        user = request.path_params["user"]
        await ctx.store.unlock(user)  # revokes the user's tokens too
        ctx.decider.forget_generation(user)
        await ctx.audit.emit("admin_unlocked", user=user)
        return answer(UserUnlocked, {"user": user, "locked": False})

    async def audit(self, request: Request) -> Response:
        ctx = self.ctx
        self.authorize(request)
        # Blank values count as absent, as they always have ('?limit=' is the default).
        query = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1")))
        unknown = set(query) - set(AUDIT_QUERY)
        if unknown:
            raise bad_request(f"unknown query parameter {sorted(unknown)[0]!r}; expected user, "
                              "since, until, limit", "invalid-query")
        since = _time(query["since"], "since") if "since" in query else None
        until = _time(query["until"], "until") if "until" in query else None
        raw_limit = query.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            raise bad_request("expected 'limit' between 1 and 1000", "invalid-query")
        events = await ctx.store.audit(query.get("user"), since, until, int(raw_limit))
        return answer(AuditEvents, {"events": events})
