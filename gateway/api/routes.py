"""The own endpoints under the prefix as one starlette application, built once: the route
table, and the one place errors become problem+json.

Only requests decide() marked "own" come here, with a path it already canonicalised; the
forwarding path never touches starlette. Routes match the decoded canonical path relative
to the prefix, a trailing slash tolerated.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.api.admin import Admin
from gateway.api.bodies import require_json
from gateway.api.common import PATH, RESERVATION, JsonAnswer, ProblemAnswer
from gateway.api.context import Context
from gateway.api.handshake import Handshake
from gateway.api.health import Health
from gateway.api.openapi import document, operations
from gateway.api.selfservice import SelfService
from gateway.decision.decide import store_down
from gateway.decision.paths import CanonicalPath
from gateway.problems import Problem, not_found
from gateway.store import StoreUnavailable

log = logging.getLogger("stepgate")
Handler = Callable[[Request], Awaitable[Response]]


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return ProblemAnswer(exc)


async def _routing(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return ProblemAnswer(Problem("method-not-allowed", headers=[(b"allow", allow.encode())]))
    if exc.status_code == 404:
        return ProblemAnswer(not_found())
    return ProblemAnswer(Problem("bad-request", detail=exc.detail))


async def _store(request: Request, exc: Exception) -> Response:
    log.error("store unavailable")
    return ProblemAnswer(store_down())


async def _internal(request: Request, exc: Exception) -> Response:
    # Logged by Endpoints.dispatch once it has been answered.
    return ProblemAnswer(Problem("internal-error"))


class Endpoints:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        shake = Handshake(ctx)
        me = SelfService(ctx)
        admin = Admin(ctx)
        probes = Health(ctx)
        self.operations = operations(ctx)
        self.openapi = document(ctx, self.operations)
        table: list[tuple[str, dict[str, Handler]]] = [
            ("/health", {"GET": probes.health}),
            ("/ready", {"GET": probes.ready}),
            ("/config", {"GET": shake.config}),
            ("/openapi.json", {"GET": self.openapi_json}),
            ("/challenges", {"POST": shake.create_challenge}),
            ("/challenges/{challenge_id}", {"GET": shake.challenge_state}),
            ("/challenges/{challenge_id}/verify", {"POST": shake.verify}),
            ("/factors", {"GET": me.list_factors}),
            ("/factors/{factor_id}/confirm", {"POST": me.confirm}),
            ("/factors/{factor}", {"POST": me.enrol, "DELETE": me.delete_factor}),
            ("/recovery-codes", {"POST": me.recovery_codes}),
            ("/admin/users/{user}/factors", {"GET": admin.user_factors, "DELETE": admin.reset}),
            ("/admin/users/{user}/unlock", {"POST": admin.unlock}),
            ("/admin/audit", {"GET": admin.audit}),
        ]
        self.routes = [Route(path, self._endpoint(handlers), methods=list(handlers))
                       for path, handlers in table]
        self.app = Starlette(routes=self.routes, exception_handlers={
            Problem: _problem, HTTPException: _routing, StoreUnavailable: _store,
            Exception: _internal})
        self.app.router.redirect_slashes = False  # a trailing slash is stripped, never redirected

    def _endpoint(self, handlers: dict[str, Handler]) -> Handler:
        ctx = self.ctx

        async def run(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            if method == "POST":
                require_json(request)
            try:
                return await handlers[method](request)
            finally:
                jti = request.scope.pop(RESERVATION, None)
                if jti is not None:  # the change failed: the manage token may be used again
                    await ctx.uses.settle(jti, "refused")
        return run

    async def openapi_json(self, request: Request) -> Response:
        return JsonAnswer(self.openapi, no_store=False)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, cp: CanonicalPath) -> None:
        """Serve one request decide() marked "own". Every error is answered here (starlette
        answers an unexpected one with ``internal-error``, then raises it again): it is
        logged, never answered twice."""
        rest = cp.decoded[len(self.ctx.prefix):] or "/"
        if rest != "/" and rest.endswith("/"):
            rest = rest[:-1]
        child: dict[str, Any] = dict(scope, path=rest, root_path="")
        child.pop("raw_path", None)
        child[PATH] = cp
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)
        try:
            await self.app(child, receive, tracking_send)
        except ClientDisconnect:
            return  # the client left mid-body: nobody to answer
        except Exception:
            if not started:
                raise
            # Our own fault: logged without request data, already answered.
            log.exception("internal error")
