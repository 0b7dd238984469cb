"""The factors a configuration offers, by name: adding a kind of factor means adding its
module and one line here, never a change to the endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.settings import Settings
from gateway.keys import KeyRing
from gateway.store import Store

from .base import Channel, Factor
from .delivered import DeliveredFactor
from .delivery import deliverer
from .recovery import RecoveryFactor
from .totp import TotpFactor


@dataclass(frozen=True)
class Registry:
    factors: dict[str, Factor]  # every second factor a rule may name
    channels: Mapping[str, Channel]  # delivered-code channels, notification-only ones too


def registry(settings: Settings, store: Store, keys: KeyRing) -> Registry:
    channels = {ch.name: DeliveredFactor(ch, store, keys, deliverer(ch), settings.totp_issuer)
                for ch in settings.channels}
    factors: dict[str, Factor] = {
        "totp": TotpFactor(store, keys, settings.totp_issuer),
        "recovery": RecoveryFactor(store, settings.recovery_count),
    }
    factors.update((n, f) for n, f in channels.items() if f.ch.second_factor)
    return Registry(factors, channels)
