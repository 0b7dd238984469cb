"""Sections about users: ``identity`` (the first factor), ``factors`` with their delivered-code
channels and ``enrollment``, and ``notify``. Source and channel kinds are the registry's
names (config.registry)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config.fields import (
    Choice,
    Custom,
    Duration,
    Flag,
    Group,
    Integer,
    Schema,
    Strings,
    Text,
    anchored,
    defaults_of,
    literal,
    obj,
)
from gateway.config.registry import (
    ADDRESS_KINDS,
    BASIC_BACKENDS,
    CHANNEL_KINDS,
    DEFAULT_ADDRESS,
    IDENTITY_SOURCES,
    VERIFY_MODES,
    basic_backend_names,
)
from gateway.config.rules import FACTOR_NAME
from gateway.config.sections.base import HEADER_NAME, Loading, Section, properties_of, read_group
from gateway.config.sections.server import HTTP_URL_SCHEMA, http_url
from gateway.config.settings import (
    BUILTIN_FACTORS,
    BasicIdentity,
    ChannelSettings,
    HeaderIdentity,
    Settings,
    SmtpSettings,
)
from gateway.config.validate import Invalid, Reader, found, listing

# A channel's name is the factor name rules require it by.
CHANNEL_NAME = FACTOR_NAME
_CHANNEL = re.compile(CHANNEL_NAME)

def _headers(value: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(value, dict):
        return None
    wrong = [(f"{k!r}: expected a string, found {found(x)}", k) for k, x in value.items()
             if not isinstance(x, str)]
    if wrong:
        raise Invalid.each(wrong)
    return tuple((str(k), x) for k, x in value.items())


BASIC = Group(BasicIdentity, (
    Text("htpasswd", doc="bcrypt htpasswd file"),
    Choice("verify", VERIFY_MODES, optional=True,
           doc="backend: trust the Basic user name, the upstream checks the password"),
    Text("realm", optional=True, doc="realm of the Basic challenge (default: realm)"),
))
PROBE = Group(BasicIdentity, (
    Text("path", attr="probe_path", required=True, pattern=r"/.*",
         expected="a path starting with '/'",
         doc="upstream path the client's credentials are sent to; 2xx means valid"),
    Duration("cache_ttl", attr="probe_cache_ttl", maximum=3600),
))
HEADER = Group(HeaderIdentity, (
    Text("name", pattern=HEADER_NAME, expected="an HTTP header name",
         doc="a user header set by a front proxy; believed only from trusted_proxies"),
))

ENROLLMENT = Group(Settings, (
    Choice("enrollment", literal(Settings, "enrollment"),
           doc="admin: a user without factors cannot enrol alone"),
))
TOTP = Group(Settings, (
    Text("issuer", attr="totp_issuer", pattern=r"[^:]+", expected="an issuer name without ':'",
         doc="shown by authenticator apps"),
))
RECOVERY = Group(Settings, (
    Integer("count", attr="recovery_count", minimum=1, maximum=100, doc="codes per set"),
))
CHANNEL = Group(ChannelSettings, (
    Integer("digits", minimum=6, maximum=8),
    Duration("ttl", maximum=600, doc="lifetime of a sent code"),
    Choice("address", ADDRESS_KINDS,
           doc="address format; sms defaults to e164, email to email, others to any"),
    Flag("second_factor", doc="false: the channel only carries notifications"),
    Text("subject", doc="e-mail subject"),
))
DELIVER = Group(ChannelSettings, (
    Strings("command", item="program arguments",
            doc="argv; the message on stdin, the address in $STEPGATE_ADDRESS"),
    Duration("timeout", maximum=120),
))
WEBHOOK = Group(ChannelSettings, (
    Custom("url", attr="webhook_url", required=True, expected="an http:// or https:// URL",
           convert=http_url, json=HTTP_URL_SCHEMA, doc="receives POST {channel, address, message}"),
    Custom("headers", attr="webhook_headers",
           expected="a mapping of header names to strings",
           convert=_headers,
           show=dict, json={"type": "object", "additionalProperties": {"type": "string"}}),
))
SMTP = Group(SmtpSettings, (
    Text("host"),
    Integer("port", minimum=1, maximum=65535),
    Text("sender", pattern=r"[^@\s]+@[^@\s]+", expected="an e-mail address"),
    Flag("starttls"),
    Text("username_env", doc="environment variable with the SMTP user name"),
    Text("password_env", doc="environment variable with the SMTP password"),
))


# ---------------------------------------------------------------------------- identity

def _basic(ident: Reader, ctx: Loading) -> None:
    basic = ident.section("basic")
    if basic is None:
        return
    values = BASIC.read(basic, realm=ctx.values.get("realm") or defaults_of(Settings)["realm"])
    probe = read_group(basic, "upstream_probe", PROBE) or {}
    one_of(basic, BASIC_BACKENDS, basic_backend_names())
    htpasswd = ctx.resolve(values["htpasswd"]) if values["htpasswd"] else None
    ctx.values["basic"] = BasicIdentity(
        realm=values["realm"], htpasswd=htpasswd, verify_backend=values["verify"] == "backend",
        **{k: v for k, v in probe.items() if v is not None})
    basic.finish()
    if htpasswd is not None and not htpasswd.is_file():
        basic.report(basic.keypath("htpasswd"),
                     f"expected an htpasswd file, found no file at {htpasswd}",
                     basic.line_of("htpasswd"))


def one_of(r: Reader, keys: tuple[str, ...], shown: tuple[str, ...]) -> None:
    """Exactly one of ``keys`` must be written (``shown`` as messages name them); a key
    written wrong counts as written, so its own problem is the only one."""
    given = [k for k in keys if r.has(k)]
    expected = "exactly one of " + listing(shown)
    if not given:
        r.missing_key("", expected, also=keys)
    elif len(given) > 1:
        r.report(r.path, f"expected {expected}, found {listing(given, 'and')}",
                 r.line_of(given[1]))


def _header(ident: Reader, ctx: Loading) -> None:
    values = read_group(ident, "header", HEADER)
    if values is not None:
        ctx.values["header_identity"] = HeaderIdentity(**values)


_SOURCES: dict[str, Callable[[Reader, Loading], None]] = {"basic": _basic, "header": _header}
assert tuple(_SOURCES) == IDENTITY_SOURCES, "an identity source without a validator"


def _identity(r: Reader, ctx: Loading) -> None:
    ident = r.section("identity")
    if ident is not None:
        for read in _SOURCES.values():
            read(ident, ctx)
        ident.finish()


def _identity_schema() -> dict[str, Schema]:
    basic = BASIC.schema(nullable=False, extra={"upstream_probe": PROBE.schema(nullable=False)},
                         oneOf=[{"required": [b]} for b in BASIC_BACKENDS])
    sources = {"basic": basic, "header": HEADER.schema(nullable=False)}
    return {"identity": obj({s: sources[s] for s in IDENTITY_SOURCES}, nullable=True)}


# ---------------------------------------------------------------------------- factors

def _command(deliver: Reader, ctx: Loading) -> dict[str, Any] | None:
    command = DELIVER.one(deliver, "command", None)
    if not command:
        return None
    prog = command[0]
    if "/" in prog and not Path(prog).is_absolute():
        prog = str(ctx.resolve(prog))
    return {"command": (prog, *command[1:])}


def _webhook(deliver: Reader, ctx: Loading) -> dict[str, Any] | None:
    return read_group(deliver, "webhook", WEBHOOK)


def _smtp(deliver: Reader, ctx: Loading) -> dict[str, Any] | None:
    values = read_group(deliver, "smtp", SMTP)
    return None if values is None else {"smtp": SmtpSettings(**values)}


_KINDS: dict[str, Callable[[Reader, Loading], dict[str, Any] | None]] = {
    "command": _command, "webhook": _webhook, "smtp": _smtp}
assert tuple(_KINDS) == CHANNEL_KINDS, "a channel kind without a validator"


def _channel(ch: Reader, name: str, ctx: Loading) -> ChannelSettings | None:
    before = len(ch.errors)
    deliver = ch.section("deliver", required=True)
    kind = None
    out: dict[str, Any] = {}
    if deliver is not None:
        one_of(deliver, CHANNEL_KINDS, CHANNEL_KINDS)
        for candidate, read in _KINDS.items():
            values = read(deliver, ctx)
            if values is not None:
                kind = candidate
                out.update(values)
        out["timeout"] = DELIVER.one(deliver, "timeout")
        deliver.finish()
    default_address = DEFAULT_ADDRESS.get(name, defaults_of(ChannelSettings)["address"])
    out.update(CHANNEL.read(ch, address=default_address))
    ch.finish()
    if kind is None or len(ch.errors) > before:
        ctx.broken_channels.add(name)
        if out.get("second_factor") is not False:
            # Rules that require it are right; the channel is what is wrong.
            ctx.known_factors.add(name)
        return None
    return ChannelSettings(name=name, kind=kind, **out)  # type: ignore[arg-type]


def _factors(r: Reader, ctx: Loading) -> None:
    ctx.values.update(ENROLLMENT.read(r))
    fac = r.section("factors")
    if fac is None:
        return
    for builtin, group in (("totp", TOTP), ("recovery", RECOVERY)):
        values = read_group(fac, builtin, group)
        if values is not None:
            ctx.values.update(values)
    channels = []
    for name in list(fac.data):
        if name in BUILTIN_FACTORS:
            continue
        if not isinstance(name, str) or not _CHANNEL.fullmatch(name):
            fac.error(str(name), "a channel name of lower-case letters, digits, '_' or '-'", name,
                      line=fac.line_of(name))
            fac.used.add(name)
            continue
        ch = fac.section(name)
        parsed = _channel(ch, name, ctx) if ch is not None else None
        if parsed is not None:
            channels.append(parsed)
            if parsed.second_factor:
                ctx.known_factors.add(name)
    ctx.values["channels"] = tuple(channels)
    fac.finish()


def _factors_schema() -> dict[str, Schema]:
    deliver = DELIVER.schema(nullable=False, extra={
        "webhook": WEBHOOK.schema(nullable=False), "smtp": SMTP.schema(nullable=False)},
        oneOf=[{"required": [k]} for k in CHANNEL_KINDS])
    channel = CHANNEL.schema(nullable=False, extra={"deliver": deliver}, required=["deliver"])
    builtin = {"totp": TOTP.schema(), "recovery": RECOVERY.schema()}
    assert tuple(builtin) == BUILTIN_FACTORS
    # Channels named sms and email default to their own address kind.
    named = {name: copy.deepcopy(channel) for name in DEFAULT_ADDRESS}
    for name, kind in DEFAULT_ADDRESS.items():
        named[name]["properties"]["address"]["default"] = kind
    factors = obj({**builtin, **named}, nullable=True, additionalProperties=channel,
                  propertyNames={"pattern": anchored(CHANNEL_NAME)},
                  description="totp, recovery, and delivered-code channels by name")
    return {**properties_of(ENROLLMENT), "factors": factors}


# ---------------------------------------------------------------------------- notify

def _notify(r: Reader, ctx: Loading) -> None:
    nt = r.section("notify")
    if nt is not None:
        names = [c.name for c in ctx.values.get("channels", ())] + sorted(ctx.broken_channels)
        ctx.values["notify_channel"] = nt.choice("channel", names or ["(no channel configured)"],
                                                 None)
        nt.finish()


def _notify_schema() -> dict[str, Schema]:
    channel = {"type": "string", "pattern": anchored(CHANNEL_NAME),
               "description": "a channel under factors: that announces factor changes"}
    return {"notify": obj({"channel": channel}, nullable=True)}


SECTIONS = (
    Section("identity", _identity, _identity_schema),
    Section("factors", _factors, _factors_schema),
    Section("notify", _notify, _notify_schema),
)
