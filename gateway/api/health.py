"""``GET {prefix}/health`` and ``GET {prefix}/ready`` (docs/operations.md): for probes, no
credentials, no personal data.

- health: 200 while the process serves requests.
- ready: 200 when policies are loaded and the store (and Redis, when configured) answered
  a real round trip; else 503 ``not-ready`` naming every part that is down. The answer is
  remembered for one second, so probes cannot load the store.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import answer
from gateway.api.context import Context
from gateway.api.models import Readiness, Serving
from gateway.problems import Problem

READY_TTL = 1.0


class Health:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._last: tuple[float, list[str]] | None = None
        self._lock = asyncio.Lock()

    async def health(self, request: Request) -> Response:
        return answer(Serving, {"status": "serving"})

    async def ready(self, request: Request) -> Response:
        down = await self._down()
        if down:
            raise Problem("not-ready", detail="; ".join(down), down=down,
                          headers=[(b"retry-after", b"5")])
        return answer(Readiness, {"status": "ready",
                                  "rules": len(self.ctx.decider.engine.rules)})

    async def _down(self) -> list[str]:
        async with self._lock:  # concurrent probes share one check
            last = self._last
            now = time.monotonic()
            if last is not None and now - last[0] < READY_TTL:
                return last[1]
            down = await self.ctx.store.ready()
            self._last = (time.monotonic(), down)
            return down
