"""What the gateway's own endpoints may use: a small context, not the whole gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.audit import Audit
from gateway.config.settings import Settings
from gateway.decision.decide import Decider
from gateway.decision.regulator import Regulator
from gateway.decision.tokens import Signer
from gateway.decision.uses import TokenUses
from gateway.factors.base import Channel, Factor
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
    channels: Mapping[str, Channel]  # delivered-code channels, notification-only ones too
    admin_key: bytes | None
    background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def prefix(self) -> str:
        return self.settings.prefix
