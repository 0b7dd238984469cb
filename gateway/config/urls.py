"""Store and Redis URLs checked part by part (scheme, user, host, port, database,
parameters), so that a wrong one is named exactly: which part, what was expected, what was
found. A password written in a URL is never shown: messages show ``***`` in its place.

The shapes and parameter names come from config.registry; the backends (gateway.store)
read the same URLs and parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from gateway.config.registry import (
    ENV_NAME,
    HOT_EXAMPLE,
    HOT_PARAMETERS,
    HOT_SCHEMES,
    SSL_MODES,
    STORE_EXAMPLES,
    STORE_PARAMETERS,
    STORE_SCHEMES,
)
from gateway.config.validate import Invalid, did_you_mean, listing, suggest

POSTGRESQL_FORM = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
REDIS_FORM = "redis://[:PASSWORD@]HOST[:PORT][/N]"
_ENV = re.compile(ENV_NAME)
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "read-write", "read-only", "prefer-standby")
CERT_REQS = ("none", "optional", "required")
# Parameters naming files ('system' is libpq's name for the system's CA certificates).
FILE_PARAMETERS = frozenset({"password_file", "sslrootcert", "sslcert", "sslkey", "sslcrl",
                             "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})
_HIDDEN = "***"


def _netloc(url: str) -> tuple[str, str, str]:
    """scheme, the part between '://' and the first of '/', '?' or '#', and the rest."""
    scheme, _, rest = url.partition("://")
    cut = min((i for i in (rest.find(m) for m in "/?#") if i != -1), default=len(rest))
    return scheme, rest[:cut], rest[cut:]


def _split(url: str) -> tuple[str, str, str, str, str]:
    """scheme, userinfo, host and port, path, query (without '?')."""
    scheme, netloc, tail = _netloc(url)
    userinfo, _, hostport = netloc.rpartition("@")
    tail = tail.partition("#")[0]
    path, _, query = tail.partition("?")
    return scheme, userinfo, hostport, path, query


def redacted(url: str) -> str:
    """The URL as messages and progress lines show it: a password replaced by ``***``."""
    if "://" not in url:
        return url
    scheme, netloc, tail = _netloc(url)
    userinfo, _, hostport = netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:{_HIDDEN}@{hostport}{tail}"


def parameters(url: str) -> dict[str, str]:
    """The URL's query parameters, decoded (a URL that validated names each once)."""
    query = _split(url)[4] if "://" in url else ""
    out: dict[str, str] = {}
    for item in query.split("&") if query else ():
        name, _, value = item.partition("=")
        out.setdefault(unquote(name), unquote(value))
    return out


def has_password(url: str) -> bool:
    return ":" in _split(url)[1] if "://" in url else False


def with_files_resolved(url: str, resolve: Callable[[str], Path]) -> str:
    """``password_file`` and the TLS files made absolute, relative to the configuration
    file's folder like every other path the configuration names."""
    scheme, _, rest = url.partition("://")
    head, mark, query = rest.partition("?")
    if not mark:
        return url
    items = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        if unquote(name) in FILE_PARAMETERS and value and unquote(value) != "system":
            value = quote(str(resolve(unquote(value))), safe="/")
        items.append(name + eq + value)
    return f"{scheme}://{head}?{'&'.join(items)}"


def _port(hostport: str, shown: str, reasons: list[str]) -> str:
    """The host, after checking the port that may follow it."""
    port: str | None
    if hostport.startswith("["):
        inside, close, after = hostport[1:].partition("]")
        host = f"[{inside}]" if close else hostport
        port = after.removeprefix(":") if after else None
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        reasons.append(f"expected a port from 1 to 65535 after the host, found {port!r} in "
                       f"{shown!r}")
    return host


def _parameters(query: str, known: dict[str, str], shown: str,
                reasons: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in query.split("&") if query else ():
        raw, eq, raw_value = item.partition("=")
        name, value = unquote(raw), unquote(raw_value)
        if name not in known:
            guess = suggest(name, known)
            reasons.append(f"unknown parameter {name!r}, did you mean {guess!r}?" if guess
                           else f"unknown parameter {name!r} in {shown!r}; expected one of "
                                f"{listing(known)}")
            continue
        if name in values:
            reasons.append(f"parameter {name!r}: expected it once, found it again in {shown!r}")
            continue
        if not eq or not value:
            reasons.append(f"parameter {name!r}: expected a value after '{name}=', found none")
            continue
        values[name] = value
    for name in ("pool_min", "pool_max"):
        number = values.get(name)
        least = 0 if name == "pool_min" else 1
        if number is not None and not (number.isdigit() and int(number) >= least):
            reasons.append(f"parameter {name!r}: expected an integer >= {least}, found "
                           f"{number!r}")
            del values[name]
    if "pool_min" in values and "pool_max" in values and \
            int(values["pool_min"]) > int(values["pool_max"]):
        reasons.append(f"parameter 'pool_min': expected at most pool_max "
                       f"({int(values['pool_max'])}), found {int(values['pool_min'])}")
    mode = values.get("sslmode")
    if mode is not None and mode not in SSL_MODES:
        reasons.append(f"parameter 'sslmode': expected one of {listing(SSL_MODES)}, found "
                       f"{mode!r}{did_you_mean(mode, SSL_MODES)}")
    for name, choices in (("target_session_attrs", TARGET_SESSION_ATTRS),
                          ("ssl_cert_reqs", CERT_REQS)):
        chosen = values.get(name)
        if chosen is not None and name in known and chosen not in choices:
            reasons.append(f"parameter {name!r}: expected one of {listing(choices)}, found "
                           f"{chosen!r}{did_you_mean(chosen, choices)}")
    env = values.get("password_env")
    if env is not None and not _ENV.fullmatch(env):
        reasons.append(f"parameter 'password_env': expected an environment variable name "
                       f"like 'STEPGATE_DB_PASSWORD', found {env!r}")
    return values


def _one_password(userinfo: str, values: dict[str, str], reasons: list[str]) -> None:
    sources = [s for s, present in (("a password in the URL", ":" in userinfo),
                                    ("password_env", "password_env" in values),
                                    ("password_file", "password_file" in values)) if present]
    if len(sources) > 1:
        reasons.append(f"expected one source of the password, found {', '.join(sources[:-1])} "
                       f"and {sources[-1]}")


def _scheme(url: str, schemes: tuple[str, ...], shown: str) -> str:
    scheme = url.partition("://")[0] if "://" in url else url.partition(":")[0]
    if "://" in url and scheme in schemes:
        return scheme
    starts = listing([f"{s}:///" if s == "sqlite" else f"{s}://" for s in schemes])
    why = f"expected a URL starting with {starts}, found {shown!r}"
    guess = suggest(scheme, schemes) if scheme else None
    if guess is not None and guess != scheme:
        why += f", did you mean {guess!r}?"
    raise Invalid(why)


def store_url(value: Any) -> str | None:
    """A ``store`` URL, or None when it is not a string; raises Invalid naming each part
    that is wrong."""
    if not isinstance(value, str) or not value:
        return None
    shown = redacted(value)
    try:
        scheme = _scheme(value, STORE_SCHEMES, shown)
    except Invalid as exc:
        if value.partition(":")[0] in HOT_SCHEMES:
            raise Invalid(f"{exc}; Redis holds only the hot state: name it under 'redis' and "
                          f"a SQL store here, like {STORE_EXAMPLES['postgresql']!r}") from None
        raise
    if scheme == "sqlite":
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            raise Invalid(f"expected 'sqlite:///' and a path, like "
                          f"{STORE_EXAMPLES['sqlite']!r}, found {shown!r}")
        return value
    _, userinfo, hostport, path, query = _split(value)
    reasons: list[str] = []
    if not userinfo.partition(":")[0]:
        reasons.append(f"expected a user name before '@', as in {POSTGRESQL_FORM}, found "
                       f"none in {shown!r}")
    host = _port(hostport, shown, reasons)
    if not host:
        reasons.append(f"expected a host after '@', as in {POSTGRESQL_FORM}, found none in "
                       f"{shown!r}")
    database = path[1:]
    if not database:
        reasons.append(f"expected a database name after the host, as in {POSTGRESQL_FORM}, "
                       f"found none in {shown!r}")
    elif "/" in database:
        reasons.append(f"expected one database name after the host, found {database!r}")
    if "#" in value:
        reasons.append(f"expected no '#' fragment, found one in {shown!r}")
    values = _parameters(query, STORE_PARAMETERS[scheme], shown, reasons)
    _one_password(userinfo, values, reasons)
    if reasons:
        raise Invalid.each([(r, None) for r in reasons])
    return value


def hot_url(value: Any) -> str | None:
    """A ``redis`` URL, or None when it is not a string; raises Invalid naming each part
    that is wrong."""
    if not isinstance(value, str) or not value:
        return None
    shown = redacted(value)
    _scheme(value, HOT_SCHEMES, shown)
    _, userinfo, hostport, path, query = _split(value)
    reasons: list[str] = []
    if not _port(hostport, shown, reasons):
        reasons.append(f"expected a host, as in {REDIS_FORM}, found none in {shown!r}")
    database = path[1:]
    if database and not database.isdigit():
        reasons.append(f"expected a database number after the host, as in {HOT_EXAMPLE!r}, "
                       f"found {database!r}")
    if "#" in value:
        reasons.append(f"expected no '#' fragment, found one in {shown!r}")
    values = _parameters(query, HOT_PARAMETERS, shown, reasons)
    _one_password(userinfo, values, reasons)
    if reasons:
        raise Invalid.each([(r, None) for r in reasons])
    return value


def store_expected() -> str:
    return "a store URL like " + " or ".join(repr(e) for e in STORE_EXAMPLES.values())


def hot_expected() -> str:
    return f"a Redis URL like {HOT_EXAMPLE!r} or 'rediss://...'"
