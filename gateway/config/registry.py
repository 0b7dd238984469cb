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
# also the JSON Schema's) and an example that messages show. The parameters a URL's query
# may carry are named with the pattern of their value; config.urls checks each part and
# says which one is wrong, the backends (gateway.store) read them.
StoreScheme = Literal["sqlite", "postgresql"]
STORE_SCHEMES: tuple[str, ...] = get_args(StoreScheme)
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PASSWORD_PARAMETERS = {"password_env": ENV_NAME, "password_file": r"[^&#\s]+"}
# libpq's sslmode values (PostgreSQL documentation, 34.19 SSL Support).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PATH = r"[^&#\s]+"
# Beside the store's own (pool sizes, password source), the libpq connection parameters
# asyncpg reads and two server settings; the backend passes them on.
STORE_PARAMETERS: dict[str, dict[str, str]] = {
    "sqlite": {},
    "postgresql": {"pool_min": r"\d+", "pool_max": r"0*[1-9]\d*", "sslmode": "|".join(SSL_MODES),
                   **_PASSWORD_PARAMETERS, "sslrootcert": _PATH, "sslcert": _PATH,
                   "sslkey": _PATH, "sslcrl": _PATH,
                   "target_session_attrs": "any|primary|standby|read-write|read-only|"
                                           "prefer-standby",
                   "application_name": r"[^&#\s]+", "search_path": r"[^&#\s]+"},
}
# Hot state (token uses, counters, lockouts) may move to Redis: ``redis:`` names it.
HotScheme = Literal["redis", "rediss"]
HOT_SCHEMES: tuple[str, ...] = get_args(HotScheme)
# Beside the password source, the TLS files and check redis-py reads for rediss://.
HOT_PARAMETERS: dict[str, str] = {**_PASSWORD_PARAMETERS, "ssl_ca_certs": _PATH,
                                  "ssl_certfile": _PATH, "ssl_keyfile": _PATH,
                                  "ssl_cert_reqs": "none|optional|required"}


def _query(parameters: dict[str, str]) -> str:
    if not parameters:
        return ""
    one = "|".join(f"{name}=(?:{value})" for name, value in parameters.items())
    return rf"(?:\?(?:{one})(?:&(?:{one}))*)?"


_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)"
_USER = r"[^\s/?#@:]+(?::[^\s/?#@]*)?"
STORE_URL_SHAPES: dict[str, str] = {
    "sqlite": r"sqlite:///.+",
    "postgresql": rf"postgresql://{_USER}@{_HOST}(?::\d{{1,5}})?/[^\s/?#]+"
                  + _query(STORE_PARAMETERS["postgresql"]),
}
STORE_EXAMPLES: dict[str, str] = {"sqlite": "sqlite:///stepgate.db",
                                  "postgresql": "postgresql://stepgate@db.internal:5432/stepgate"}
HOT_URL_SHAPE = (rf"rediss?://(?:(?:[^\s/?#@:]*)?(?::[^\s/?#@]*)?@)?{_HOST}(?::\d{{1,5}})?"
                 rf"(?:/\d*)?{_query(HOT_PARAMETERS)}")
HOT_EXAMPLE = "redis://cache.internal:6379/0"

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
