"""The admin API: a bearer key from the environment or a file; no key, no admin API."""

from __future__ import annotations

import hmac
import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from gateway.api.selfservice import public
from gateway.decision.paths import CanonicalPath
from gateway.http.wire import Receive, Scope, Send, header, send_json
from gateway.problems import Problem, bad_request, not_found

if TYPE_CHECKING:
    from gateway.api.handshake import Endpoints
    from gateway.config.settings import Settings

MIN_KEY_LENGTH = 24


class AdminKeyError(Exception):
    pass


def load_admin_key(settings: Settings) -> bytes | None:
    """The configured key, or None when the admin API is off."""
    key = ""
    if settings.admin_key_env:
        key = os.environ.get(settings.admin_key_env, "").strip()
    if not key and settings.admin_key_file is not None:
        try:
            key = settings.admin_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminKeyError(f"admin.key_file: expected a readable file, found "
                                f"{exc.strerror} at {settings.admin_key_file}") from None
    if not key:
        return None
    if len(key) < MIN_KEY_LENGTH:
        raise AdminKeyError(f"admin key: expected at least {MIN_KEY_LENGTH} characters, "
                            f"found {len(key)}")
    return key.encode()


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
        self.gw = ep.gw

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Any]]]:
        return [
            (re.compile(r"^/admin/users/([^/]+)/factors\Z"), {"GET": self.user_factors,
                                                              "DELETE": self.reset}),
            (re.compile(r"^/admin/users/([^/]+)/unlock\Z"), {"POST": self.unlock}),
            (re.compile(r"^/admin/audit\Z"), {"GET": self.audit}),
        ]

    def authorize(self, scope: Scope) -> None:
        key = self.gw.admin_key
        if key is None:
            raise not_found()  # the admin API is off
        value = header(scope["headers"], b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        # compare_digest on equal-length digests: no early exit, no length oracle
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(
            hmac.new(b"stepgate-admin", given.strip(), "sha256").digest(),
            hmac.new(b"stepgate-admin", key, "sha256").digest())
        if not ok:
            raise Problem("unauthenticated",
                          headers=[(b"www-authenticate", b'Bearer realm="stepgate-admin"')])

    async def user_factors(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                           user: str) -> None:
        self.authorize(scope)
        store = self.gw.store
        lock = await store.user_lock(user)
        now = self.gw.clock()
        await send_json(send, 200, {
            "user": user, "factors": [public(r) for r in await store.factors(user)],
            "recovery_codes_left": await store.recovery_codes_left(user),
            "failures": lock.failures, "hard_locked": lock.hard,
            "locked_for": max(0, int(lock.locked_until - now)) if not lock.hard else None})

    async def reset(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                    user: str) -> None:
        self.authorize(scope)
        removed = await self.gw.store.delete_user(user)  # revokes the user's tokens too
        self.gw.forget_generation(user)
        await self.gw.audit.emit("admin_reset", user=user, removed=removed)
        await send_json(send, 200, {"user": user, "removed": removed})

    async def unlock(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath,
                     user: str) -> None:
        self.authorize(scope)
        await self.gw.store.unlock(user)  # revokes the user's tokens too
        self.gw.forget_generation(user)
        await self.gw.audit.emit("admin_unlocked", user=user)
        await send_json(send, 200, {"user": user, "locked": False})

    async def audit(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
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
        events = await self.gw.store.audit(query.get("user"), since, until, int(raw_limit))
        await send_json(send, 200, {"events": events})
