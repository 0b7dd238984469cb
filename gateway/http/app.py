"""The gateway as one ASGI application: decide, then forward (reverse-proxy mode), serve
the gateway's own endpoints, or answer the problem."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from gateway.api.context import Context
from gateway.api.routes import Endpoints
from gateway.audit import Audit
from gateway.config.settings import Settings
from gateway.decision.decide import Decider, View, store_down
from gateway.decision.identity import make_identity
from gateway.decision.policies import PolicyEngine
from gateway.decision.regulator import Regulator
from gateway.decision.tokens import Signer
from gateway.decision.uses import TokenUses
from gateway.factors.registry import registry
from gateway.http.access import NOTE, AccessLog
from gateway.http.forwardauth import ForwardAuth
from gateway.http.relay import Relay
from gateway.http.reload import Reloader
from gateway.http.wire import (
    STARTED,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    request_id,
    send_problem,
)
from gateway.keys import KeyRing, load_admin_key
from gateway.metrics import METRICS
from gateway.primitives import REQUEST_ID, new_request_id
from gateway.problems import Problem
from gateway.proxy import AiohttpForwarder, Forwarder, HeaderPolicy
from gateway.store import Store, StoreUnavailable, open_store

log = logging.getLogger("stepgate")
GC_GEN0_THRESHOLD = 20_000


class Parts:
    """Everything built from the settings that a reload replaces in one assignment: the
    header policy, the decider (rules, identity, factors), the own endpoints and their
    context, the relay and the forward-auth endpoints. A request reads them once, at its
    start, so it finishes under the rules it started with."""

    def __init__(self, settings: Settings, gw: Gateway) -> None:
        self.settings = settings
        ev = settings.evidence
        # X-Request-Id too: a client's copy is dropped, the request's own id is sent.
        own = [settings.token_header, ev.user, ev.rule, ev.factor, ev.verified_at,
               "X-Request-Id"]
        if settings.header_identity is not None:
            own.append(settings.header_identity.name)
        self.headers = HeaderPolicy(own, settings.trusted_proxies)
        factors = registry(settings, gw.store, gw.keys)
        self.decider = Decider(
            settings, PolicyEngine.from_rules(settings.rules, settings.default_action),
            store=gw.store, signer=gw.signer, audit=gw.audit, clock=gw.clock,
            identity=make_identity(settings.basic, settings.header_identity, gw.forwarder,
                                   self.headers, gw.clock),
            factors=factors.factors, uses=gw.uses)
        self.context = Context(
            settings=settings, store=gw.store, clock=gw.clock, keys=gw.keys, signer=gw.signer,
            audit=gw.audit, decider=self.decider, uses=gw.uses, factors=factors.factors,
            channels=factors.channels, admin_key=load_admin_key(settings),
            regulator=Regulator(gw.store, gw.clock, settings.throttle, gw.audit,
                                on_lock=self.decider.forget_generation),
            background=gw.background)
        self.endpoints = Endpoints(self.context)
        self.relay = Relay(gw.forwarder, self.headers, gw.uses,
                           settings.upstream.success_below, timed=gw.access is not None)
        self.forward_auth = ForwardAuth(settings, self.decider, gw.uses, gw.audit,
                                        self.headers.is_trusted)
        self.auth_prefix = self.forward_auth.prefix


class Gateway:
    """``create_app`` builds one; everything that varies is injected. ``serving`` (the
    server processes ``stepgate run`` starts): reload on SIGHUP and when the configuration
    or a policy file changes (gateway/http/reload.py)."""

    def __init__(self, settings: Settings, *, store: Store | None = None,
                 forwarder: Forwarder | None = None, keys: KeyRing | None = None,
                 clock: Callable[[], float] = time.time, audit: Audit | None = None,
                 serving: bool = False) -> None:
        self.clock = clock
        self.serving = serving
        self.keys = keys or KeyRing.from_settings(settings.keys)
        self.signer = Signer(self.keys.signing)
        self.store = store or open_store(settings.store_url, settings.store_timeout,
                                         hot=settings.redis_url,
                                         hot_prefix=settings.redis_prefix)
        self.audit = audit or Audit(settings.audit_path, self.store, clock)
        self.uses = TokenUses(self.store, clock)
        up = settings.upstream
        self.forwarder: Forwarder = forwarder or AiohttpForwarder(
            up.url, connect_timeout=up.connect_timeout, read_timeout=up.read_timeout,
            pool_size=up.pool_size, pool_timeout=up.pool_timeout)
        self.background: set[asyncio.Task[None]] = set()
        self.access = AccessLog.open(settings.access_log.path, clock)
        self.parts = Parts(settings, self)
        self.reloader = Reloader(self, Parts)
        self._started = False

    # The parts of the moment (a reload replaces them together).
    @property
    def settings(self) -> Settings:
        return self.parts.settings

    @property
    def decider(self) -> Decider:
        return self.parts.decider

    @property
    def context(self) -> Context:
        return self.parts.context

    @property
    def endpoints(self) -> Endpoints:
        return self.parts.endpoints

    @property
    def headers(self) -> HeaderPolicy:
        return self.parts.headers

    @property
    def forward_auth(self) -> ForwardAuth:
        return self.parts.forward_auth

    @property
    def relay(self) -> Relay:
        return self.parts.relay

    def quick(self, scope: Scope) -> bytes | None:
        """The server protocol answers a forward-auth ask known without waiting itself
        (http/server.py); not when every request must have its access-log line."""
        if self.access is not None:
            return None
        return self.parts.forward_auth.quick(scope)

    # ------------------------------------------------------------------ lifespan

    async def startup(self) -> None:
        if not self._started:
            METRICS.configure(self.settings)
            await self.store.open()
            self.signer.instance = self.store.instance_id
            watch = getattr(self.store, "watch_instance", None)
            if watch is not None:  # a store whose id can change while running (Redis)
                watch(self.instance_changed)
            self._started = True
            if self.serving:
                self.reloader.start()
            # Everything loaded so far lives as long as the process: keep the collector
            # from rescanning it on every full collection (measurable on the hot path).
            gc.collect()
            gc.freeze()
            # A forwarded request allocates a few hundred short-lived containers; with the
            # default gen-0 threshold (700) the collector ran every couple of requests.
            # Collecting every 20,000 allocations took an allowed request from 158 to 141 µs
            # of CPU in an interleaved A/B run (docs/performance.md), for a few MB of young
            # objects at most.
            gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)

    def instance_changed(self, instance: str) -> None:
        """The store's id changed while running (Redis lost its state): tickets and tokens
        issued before are refused from now on, remembered ones included."""
        self.signer.instance = instance
        self.decider.forget_tokens()

    async def shutdown(self) -> None:
        await self.reloader.stop()
        if self.background:
            await asyncio.wait(self.background, timeout=10)
        if self._started:
            await self.forwarder.aclose()
            await self.audit.drain()
            await self.store.close()
            self.audit.close()
            if self.access is not None:
                self.access.close()
            # uvicorn ends a stopped process by its signal: exit handlers do not run.
            METRICS.flush()
            self._started = False

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            access = self.access
            if access is not None:
                send = access.wrap(scope, send)
            try:
                await self.handle(scope, receive, send)
            except Problem as problem:
                if STARTED not in scope:
                    await send_problem(send, problem)
            except StoreUnavailable:
                log.error("store unavailable")
                if STARTED not in scope:
                    await send_problem(send, store_down())
            except ClientGone:
                return
            except Exception:
                # Our own fault: logged without request data, answered, never forwarded.
                log.exception("internal error")
                if STARTED not in scope:
                    await send_problem(send, Problem("internal-error"))
            finally:
                if access is not None:
                    access.done(scope)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as exc:  # noqa: BLE001 - reported to the server
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = self.parts  # this request's rules, whatever a reload does meanwhile
        headers = scope["headers"]
        client = scope.get("client")
        peer = client[0] if client else None
        hp = parts.headers
        REQUEST_ID.set(request_id(headers) if peer in hp.trusted else new_request_id())
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if raw_path.startswith(parts.auth_prefix):
            endpoint = parts.forward_auth.route(raw_path)
            if endpoint is not None:  # an ingress asks (forward-auth mode)
                if self.access is not None:
                    scope[NOTE] = ("ask", endpoint[0].name)
                await parts.forward_auth(scope, receive, send, *endpoint)
                return

        async def body(limit: int) -> bytes:
            return await read_body(receive, headers, limit)
        d = await parts.decider.decide(View(
            scope["method"], raw_path, scope.get("query_string", b""), headers, peer, body,
            scope.get("http_version") != "1.0"))
        if self.access is not None:
            scope[NOTE] = (d.kind, d.rule.name if d.rule else None, d.path)
        if d.kind == "allow":
            await parts.relay(scope, receive, send, d)
        elif d.kind == "own":
            assert d.path is not None
            await parts.endpoints.dispatch(scope, receive, send, d.path)
        else:
            assert d.problem is not None
            await send_problem(send, d.problem)


def create_app(settings: Settings, *, store: Store | None = None,
               forwarder: Forwarder | None = None, keys: KeyRing | None = None,
               clock: Callable[[], float] = time.time, audit: Audit | None = None,
               serving: bool = False) -> Gateway:
    return Gateway(settings, store=store, forwarder=forwarder, keys=keys, clock=clock,
                   audit=audit, serving=serving)


def app_from_env() -> Gateway:
    """Factory for server processes: loads the configuration named by STEPGATE_CONFIG."""
    import os

    from gateway.config.load import load_settings
    return create_app(load_settings(os.environ.get("STEPGATE_CONFIG", "config.yaml")))
