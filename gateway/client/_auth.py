"""``StepgateAuth``: an httpx.Auth that follows the 401 handshake for ``httpx.Client`` and
``httpx.AsyncClient``, keeping route and session tokens for later requests."""

from __future__ import annotations

import base64
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import anyio
import httpx

from gateway.client._cache import MemoryTokenCache, TokenCache
from gateway.client._flow import Ask, Handshake, Read, Send, Steps
from gateway.client._prompt import CodePrompt, Pause, _Resend

log = logging.getLogger("stepgate.client")

Answer = str | Mapping[str, Any] | _Resend | None
CodeCallback = Callable[[str, CodePrompt], Answer | Awaitable[Answer]]
WaitCallback = Callable[[Pause], None | Awaitable[None]]


def _log_wait(pause: Pause) -> None:
    log.warning("%s", pause)


class StepgateAuth(httpx.Auth):
    """Answers Stepgate's 401 challenges: creates a challenge, asks ``code(factor, info)``
    for the answer, verifies it and repeats the request with the token.

    ``code`` returns the code (a string), a mapping sent as the verify body for factors that
    answer otherwise, or ``RESEND`` for a new delivered code; with ``httpx.AsyncClient`` it
    may be a coroutine function. ``info`` is a ``CodePrompt``.

    ``route`` and ``session`` tokens are kept in ``cache`` (in memory unless given) under
    (gateway origin, user, rule) and sent again until they expire, their ``uses`` run out
    or the gateway refuses one (then it is dropped and the handshake runs again, once).
    A 429 with Retry-After is waited out, each wait announced to ``on_wait`` (default: a
    warning on the ``stepgate.client`` logger), while the waits of one request stay within
    ``max_wait`` seconds; beyond that, or on any other refusal, ``SecondFactorError``.
    """

    def __init__(self, code: CodeCallback, *, basic: tuple[str, str] | None = None,
                 factor: str | Sequence[str] | None = None, cache: TokenCache | None = None,
                 user: str | None = None, max_wait: float = 30.0,
                 on_wait: WaitCallback | None = None, max_rounds: int = 1,
                 clock: Callable[[], float] = time.time) -> None:
        self.code = code
        self.on_wait: WaitCallback = on_wait or _log_wait
        self.authorization: str | None = None
        if basic is not None:
            raw = f"{basic[0]}:{basic[1]}".encode()
            self.authorization = "Basic " + base64.b64encode(raw).decode()
            user = basic[0] if user is None else user
        prefer = (factor,) if isinstance(factor, str) else tuple(factor or ())
        self.cache: TokenCache = cache if cache is not None else MemoryTokenCache(clock)
        self._handshake = Handshake(cache=self.cache, factor=prefer, max_wait=max_wait,
                                    max_rounds=max_rounds, user=user, clock=clock)

    def _start(self, request: httpx.Request) -> Steps:
        if self.authorization and "authorization" not in request.headers:
            request.headers["Authorization"] = self.authorization
        return self._handshake.run(request)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        steps = self._start(request)
        result: Any = None
        while True:
            try:
                step = steps.send(result)
            except StopIteration:
                return
            result = None
            if isinstance(step, Send):
                result = yield step.request
            elif isinstance(step, Read):
                step.response.read()
            elif isinstance(step, Ask):
                result = _not_awaitable(self.code(step.prompt.factor, step.prompt),
                                        "an async code callback")
            else:
                _not_awaitable(self.on_wait(step), "an async on_wait hook")
                time.sleep(step.seconds)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        steps = self._start(request)
        result: Any = None
        while True:
            try:
                step = steps.send(result)
            except StopIteration:
                return
            result = None
            if isinstance(step, Send):
                result = yield step.request
            elif isinstance(step, Read):
                await step.response.aread()
            elif isinstance(step, Ask):
                result = self.code(step.prompt.factor, step.prompt)
                if inspect.isawaitable(result):
                    result = await result
            else:
                waited = self.on_wait(step)
                if inspect.isawaitable(waited):
                    await waited
                await anyio.sleep(step.seconds)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        return self.sync_auth_flow(request)


def _not_awaitable(value: Any, what: str) -> Any:
    """A sync client cannot wait for a callback's coroutine: closed, and refused."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise TypeError(f"{what} needs httpx.AsyncClient")
    return value
