"""Counted token uses: reserved before a request goes on, settled by what its outcome proves.

A single-use token must never deliver a request to the upstream twice. So a
use is given back only when the request definitely had no effect: the connection to
the upstream could not be opened, or the upstream answered with a definite failure
(a status at or above ``upstream.success_below``). Any other outcome — a success, a
timeout, a connection lost after the request was sent, a client that went away
mid-upload — spends the use. When the store fails while settling, the reservation
simply stays: it holds until the token expires (fail closed). docs/protocol.md states
the rule for clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from gateway.decision.tokens import Token
from gateway.metrics import METRICS
from gateway.store import ReserveResult, Store, StoreUnavailable

log = logging.getLogger("stepgate")

Outcome = Literal["success", "refused", "not_sent", "unknown"]


class TokenUses:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    async def reserve(self, token: Token) -> ReserveResult:
        """'ok', 'busy' (another request holds the last use) or 'used'; StoreUnavailable
        when the store cannot say (the caller answers 503 and forwards nothing)."""
        result = await self.store.reserve_use(token.jti, token.uses, token.expires, self.clock())
        METRICS.reservation(result)
        return result

    async def settle(self, jti: str, outcome: Outcome) -> None:
        try:
            if outcome in ("refused", "not_sent"):
                await self.store.release_use(jti)
                METRICS.settlement("released")
            else:
                await self.store.commit_use(jti)
                METRICS.settlement("committed")
        except StoreUnavailable:
            METRICS.settlement("failed")
            log.error("could not settle a token use; it stays reserved until the token expires")
