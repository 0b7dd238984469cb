"""The names a configuration may choose (config/registry.py) and the implementations chosen
by them are the same sets: adding a backend in one place without the other fails here."""

from __future__ import annotations

from gateway.config import registry
from gateway.decision import identity
from gateway.factors import delivery
from gateway.store import SCHEMES


def test_store_schemes_match() -> None:
    assert set(SCHEMES) == set(registry.STORE_SCHEMES)


def test_channel_kinds_match() -> None:
    assert set(delivery.KINDS) == set(registry.CHANNEL_KINDS)


def test_identity_sources_match() -> None:
    basic = {n for n in registry.BASIC_BACKENDS if n != "verify"} | set(registry.VERIFY_MODES)
    assert set(identity.SOURCES) == basic | {n for n in registry.IDENTITY_SOURCES if n != "basic"}
