"""Reverse-proxy mode after an allow: forward upstream, settle the token use by what the
outcome proves (decision/uses.py), stream the answer back."""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.decision.decide import Decision
from gateway.decision.uses import Outcome, TokenUses
from gateway.http.access import UPSTREAM_MS
from gateway.http.wire import STARTED, ClientGone, Receive, Scope, Send, stream_body
from gateway.primitives import REQUEST_ID
from gateway.problems import Problem
from gateway.proxy import Forwarder, HeaderPolicy, UpstreamError

log = logging.getLogger("stepgate")


class Relay:
    def __init__(self, forwarder: Forwarder, headers: HeaderPolicy, uses: TokenUses,
                 success_below: int, *, timed: bool = False) -> None:
        self.timed = timed  # note the upstream's latency for the access log
        self.forwarder = forwarder
        self.headers = headers
        self.uses = uses
        self.success_below = success_below

    async def __call__(self, scope: Scope, receive: Receive, send: Send, d: Decision) -> None:
        assert d.path is not None
        client = scope.get("client")
        out = self.headers.request(scope["headers"], client=client[0] if client else None,
                                   scheme=scope.get("scheme", "http"), extra=d.evidence or (),
                                   request_id=REQUEST_ID.get())
        query = scope.get("query_string", b"")
        target = d.path.raw + "?" + query.decode("latin-1") if query else d.path.raw
        payload: Any = d.body if d.body is not None else (
            stream_body(receive) if d.has_body else None)
        reservation = d.reservation
        settled = reservation is None
        # Until proven otherwise the request may have reached the upstream.
        outcome: Outcome = "unknown"
        try:
            try:
                sent = time.monotonic() if self.timed else 0.0
                resp = await self.forwarder.send(scope["method"], target, out, payload,
                                                 at_most_once=reservation is not None)
                if sent:
                    scope[UPSTREAM_MS] = round((time.monotonic() - sent) * 1000, 3)
            except UpstreamError as exc:
                if exc.not_sent:
                    outcome = "not_sent"
                raise
            except ClientGone:
                raise
            except Exception as exc:  # noqa: BLE001 - any client-stack failure is a 502
                log.warning("upstream request failed: %s", exc.__class__.__name__)
                raise Problem("upstream-unavailable",
                              detail="the gateway could not reach the upstream service") from None
            try:
                if reservation is not None:
                    settled = True
                    await self.uses.settle(reservation, "success" if resp.status <
                                           self.success_below else "refused")
                headers = self.headers.response(resp.headers)
                try:
                    small = await resp.small_body()
                except (TimeoutError, ConnectionError):
                    raise Problem("upstream-unavailable",
                                  detail="the upstream response broke off") from None
                scope[STARTED] = True
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": headers})
                if small is not None:
                    await send({"type": "http.response.body", "body": small})
                    return
                try:
                    async for chunk in resp.body():
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                except (TimeoutError, ConnectionError):
                    log.warning("upstream body interrupted")
                    return
                await send({"type": "http.response.body", "body": b""})
            finally:
                await resp.aclose()
        finally:
            if not settled and reservation is not None:
                await self.uses.settle(reservation, outcome)
