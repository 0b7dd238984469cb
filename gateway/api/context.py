"""What the gateway's own endpoints may use: a small context, not the whole gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.audit import Audit
from gateway.config.settings import Settings
from gateway.decision.decide import Decider
from gateway.decision.regulator import Regulator
from gateway.decision.tokens import Signer
from gateway.decision.uses import TokenUses
from gateway.factors.base import Factor
from gateway.factors.delivered import DeliveredFactor
from gateway.factors.delivery import Deliverer
from gateway.keys import KeyRing
from gateway.store import Store


@dataclass
class Context:
    settings: Settings
    store: Store
    clock: Callable[[], float]
    keys: KeyRing
    signer: Signer
    audit: Audit
    decider: Decider
    regulator: Regulator
    uses: TokenUses
    factors: dict[str, Factor]  # every second factor a rule may name
    channels: dict[str, DeliveredFactor]  # delivered-code channels, notification-only too
    deliverers: dict[str, Deliverer]
    admin_key: bytes | None
    background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def prefix(self) -> str:
        return self.settings.prefix
