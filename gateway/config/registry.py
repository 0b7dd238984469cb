"""Names of the pluggable parts a configuration may choose: store URL schemes, identity
sources and delivery channel kinds.

Validation messages and the JSON Schema (``stepgate schema config``) list these names, and
the implementations (``gateway.store``, ``gateway.decision.identity``,
``gateway.factors.delivery``) are chosen by the same names, so a backend added there is
added here once and every message and editor hint follows. Nothing here imports an
implementation: configuration sits below them (docs/configuration.md).
"""

from __future__ import annotations

from typing import Literal, get_args

# State stores, by URL scheme: the shape each scheme's URL must have (a fullmatch pattern,
# also the JSON Schema's) and an example that messages show.
StoreScheme = Literal["sqlite"]
STORE_SCHEMES: tuple[str, ...] = get_args(StoreScheme)
STORE_URL_SHAPES: dict[str, str] = {"sqlite": r"sqlite:///.+"}
STORE_EXAMPLES: dict[str, str] = {"sqlite": "sqlite:///stepgate.db"}

# First-factor sources under ``identity:``; a Basic source checks passwords with one backend.
IdentitySource = Literal["basic", "header"]
IDENTITY_SOURCES: tuple[str, ...] = get_args(IdentitySource)
BasicBackend = Literal["htpasswd", "upstream_probe", "verify"]
BASIC_BACKENDS: tuple[str, ...] = get_args(BasicBackend)
VerifyMode = Literal["backend"]
VERIFY_MODES: tuple[str, ...] = get_args(VerifyMode)

# How a delivered-code channel sends its codes (the key under ``deliver:``).
ChannelKind = Literal["command", "webhook", "smtp"]
CHANNEL_KINDS: tuple[str, ...] = get_args(ChannelKind)

# What a channel's addresses look like; channels named ``sms`` and ``email`` default to
# their obvious kind, every other channel to ``any``.
AddressKind = Literal["e164", "email", "any"]
ADDRESS_KINDS: tuple[str, ...] = get_args(AddressKind)
DEFAULT_ADDRESS: dict[str, str] = {"sms": "e164", "email": "email"}


def store_url_pattern() -> str:
    """Any registered store URL, as one fullmatch pattern."""
    return "|".join(f"(?:{STORE_URL_SHAPES[s]})" for s in STORE_SCHEMES)


def basic_backend_names() -> tuple[str, ...]:
    """The Basic backends as they are written in YAML (``verify`` takes a mode)."""
    names: list[str] = []
    for name in BASIC_BACKENDS:
        if name == "verify":
            names.extend(f"verify: {mode}" for mode in VERIFY_MODES)
        else:
            names.append(name)
    return tuple(names)
