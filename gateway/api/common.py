"""What every own endpoint shares: who is asking, answers built through their models,
problem+json, and starting a challenge within the user's send limit."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.context import Context
from gateway.factors.base import Factor, Started
from gateway.problems import Headers, Problem
from gateway.store import FactorRecord

# The canonical path decide() made of the request (its raw form is what a manage token
# binds), and a counted manage token's reservation until the change is committed.
PATH = "stepgate.path"
RESERVATION = "stepgate.reservation"


class JsonAnswer(Response):
    """A JSON answer; ``no_store`` unless it is safe to cache (it holds no code, token or
    secret)."""

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, *, no_store: bool = True,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(json.dumps(content).encode(), status_code, headers)
        if no_store:
            self.headers["cache-control"] = "no-store"


def answer(model: type[BaseModel], content: dict[str, Any], status_code: int = 200, *,
           no_store: bool = True, headers: dict[str, str] | None = None) -> JsonAnswer:
    """``content`` checked against the model the OpenAPI document declares for it."""
    doc = model.model_validate(content).model_dump(mode="json", exclude_unset=True)
    return JsonAnswer(doc, status_code, no_store=no_store, headers=headers)


class ProblemAnswer(Response):
    """problem+json exactly as Problem.render() makes it, every header field kept (a
    challenge may need several WWW-Authenticate fields, which a mapping cannot hold)."""

    def __init__(self, problem: Problem) -> None:
        status, headers, body = problem.render()
        super().__init__(body, status)
        self.raw_headers = list(headers)


def unauthenticated(ctx: Context) -> Problem:
    headers: Headers = []
    identity = ctx.decider.identity
    if identity is not None and identity.challenge:
        headers.append((b"www-authenticate", identity.challenge))
    return Problem("unauthenticated",
                   detail="send the same credentials as for the protected request",
                   headers=headers)


async def user_of(ctx: Context, request: Request) -> str:
    """The first factor's user (401 without one)."""
    client = request.scope.get("client")
    user = await ctx.decider.identify(request.scope["headers"], client[0] if client else None)
    if user is None:
        raise unauthenticated(ctx)
    return user


async def start(ctx: Context, user: str, factor: Factor, records: list[FactorRecord],
                challenge_id: str) -> Started:
    """Start a challenge. A factor that delivers sends within the per-user send limit (SMS
    pumping costs money); a failed delivery is not counted and creates nothing."""
    if not factor.delivers:
        return await factor.start(user, records, challenge_id)
    await ctx.regulator.start_send(user)
    try:
        started = await factor.start(user, records, challenge_id)
    except Problem:
        await ctx.regulator.give_back_send(user)
        await ctx.audit.emit("delivery_failed", user=user, factor=factor.type)
        raise
    await ctx.audit.emit("code_sent", user=user, factor=factor.type, factor_id=started.factor_id)
    return started


def enrol_challenge_id(factor_id: str) -> str:
    """The challenge an enrolment starts, found again by the confirm call."""
    return f"e_{factor_id}"
