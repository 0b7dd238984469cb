"""Loading the YAML configuration: every section validated, every error reported at once."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.config.rules import load_rules
from gateway.config.settings import (
    BUILTIN_FACTORS,
    BasicIdentity,
    ChannelSettings,
    ClientLimits,
    EvidenceHeaders,
    HeaderIdentity,
    KeySettings,
    ManageSettings,
    Settings,
    SmtpSettings,
    ThrottleSettings,
    UpstreamSettings,
)
from gateway.config.validate import ConfigError, Reader

_HEADER_NAME = r"[A-Za-z0-9][A-Za-z0-9-]*"
_CHANNEL = re.compile(r"^[a-z][a-z0-9_-]*\Z")


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _listen(value: object) -> tuple[str, int] | None:
    if not isinstance(value, str) or ":" not in value:
        return None
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _url(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    return value.rstrip("/")


def _network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


_ADDRESS_KINDS = ("e164", "email", "any")


def _channel(ch: Reader, name: str, base: Path) -> ChannelSettings | None:
    before = len(ch.errors)
    deliver = ch.section("deliver", required=True)
    kind = None
    out: dict[str, object] = {}
    if deliver is not None:
        given = [k for k in ("command", "webhook", "smtp") if deliver.has(k)]
        if len(given) != 1:
            deliver.error("command", "exactly one of 'command', 'webhook' or 'smtp'",
                          f"{len(given)} of them")
        command = deliver.string_list("command", None, item="program arguments")
        if command:
            kind = "command"
            prog = command[0]
            if "/" in prog and not Path(prog).is_absolute():
                prog = str(_resolve(base, prog))
            out["command"] = (prog, *command[1:])
        hook = deliver.section("webhook")
        if hook is not None:
            kind = "webhook"
            out["webhook_url"] = hook.get("url", "an http:// or https:// URL", _url)
            hdrs = hook.raw("headers", {})
            if not isinstance(hdrs, dict) or not all(isinstance(v, str) for v in hdrs.values()):
                hook.error("headers", "a mapping of header names to strings", hdrs)
                hdrs = {}
            out["webhook_headers"] = tuple((str(k), v) for k, v in hdrs.items())
            hook.finish()
        smtp = deliver.section("smtp")
        if smtp is not None:
            kind = "smtp"
            out["smtp"] = SmtpSettings(
                host=smtp.string("host"), port=smtp.integer("port", 25, 1, 65535),
                sender=smtp.string("sender", "stepgate@localhost", pattern=r"[^@\s]+@[^@\s]+",
                                   expected="an e-mail address"),
                starttls=smtp.boolean("starttls", False),
                username_env=smtp.string("username_env", None),
                password_env=smtp.string("password_env", None))
            smtp.finish()
        out["timeout"] = deliver.duration("timeout", 10.0, maximum=120)
        deliver.finish()
    digits = ch.integer("digits", 6, minimum=6, maximum=8)
    ttl = ch.duration("ttl", 300.0, maximum=600)
    default_address = {"sms": "e164", "email": "email"}.get(name, "any")
    address = ch.choice("address", _ADDRESS_KINDS, default_address)
    second = ch.boolean("second_factor", True)
    subject = ch.string("subject", "Your verification code")
    ch.finish()
    if kind is None or len(ch.errors) > before:
        return None
    return ChannelSettings(name=name, kind=kind, digits=digits, ttl=ttl,  # type: ignore[arg-type]
                           address=address, second_factor=second, subject=subject,
                           **out)  # type: ignore[arg-type]


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Load and validate the whole configuration, policies included; raise ConfigError."""
    cfg_path = Path(path)
    where = str(cfg_path)
    errors: list[str] = []
    try:
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{where}: expected a readable configuration file, "
                           f"found {exc.strerror}"]) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([f"{where}: expected a YAML document, found an error: {exc}"]) from None
    base = cfg_path.resolve().parent
    r = Reader(doc if doc is not None else {}, where, errors)
    kw: dict[str, object] = {}

    listen = r.get("listen", "host:port like '127.0.0.1:8080'", _listen, ("127.0.0.1", 8080))
    kw["listen_host"], kw["listen_port"] = listen
    kw["workers"] = r.integer("workers", 1, minimum=1, maximum=64)

    up = r.section("upstream", required=True)
    upstream = UpstreamSettings(url="http://127.0.0.1:9")
    if up is not None:
        upstream = UpstreamSettings(
            url=up.get("url", "an http:// or https:// URL without query", _url) or "",
            connect_timeout=up.duration("connect_timeout", 2.0),
            read_timeout=up.duration("read_timeout", 30.0),
            success_below=up.integer("success_below", 400, minimum=200, maximum=600),
            pool_size=up.integer("pool_size", 100, minimum=1, maximum=10000),
            pool_timeout=up.duration("pool_timeout", 5.0, maximum=300),
        )
        up.finish()

    kw["realm"] = r.string("realm", "stepgate", pattern=r'[^"\\\r\n]+',
                           expected="a realm without quotes or backslashes")
    kw["prefix"] = r.string("prefix", "/.stepgate", pattern=r"/[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*",
                            expected="a path like '/.stepgate' (no trailing slash)")
    kw["token_header"] = r.string("token_header", "X-Stepgate-Token", pattern=_HEADER_NAME,
                                  expected="an HTTP header name")
    policies_rel = r.string("policies", "policies/")
    default_action = r.choice("default_action", ("allow", "deny"), "deny")
    kw["default_action"] = default_action
    store = r.string("store", "sqlite:///stepgate.db", pattern=r"sqlite:///.+",
                     expected="a store URL like 'sqlite:///stepgate.db'")
    if store.startswith("sqlite:///"):
        kw["store_url"] = "sqlite:///" + str(_resolve(base, store[len("sqlite:///"):]))
    kw["store_timeout"] = r.duration("store_timeout", 2.0, maximum=60)

    keys = r.section("keys")
    if keys is not None:
        kf = keys.string("file", None)
        dkf = keys.string("data_file", None)
        kw["keys"] = KeySettings(
            env=keys.string("env", None if kf else "STEPGATE_KEYS"),
            file=_resolve(base, kf) if kf else None,
            data_env=keys.string("data_env", None if dkf else "STEPGATE_DATA_KEYS"),
            data_file=_resolve(base, dkf) if dkf else None,
        )
        keys.finish()

    ident = r.section("identity")
    if ident is not None:
        basic = ident.section("basic")
        if basic is not None:
            ht = basic.string("htpasswd", None)
            probe = basic.section("upstream_probe")
            probe_path, probe_ttl = None, 30.0
            if probe is not None:
                probe_path = probe.string("path", pattern=r"/.*", expected="a path starting with '/'")
                probe_ttl = probe.duration("cache_ttl", 30.0, maximum=3600)
                probe.finish()
            verify = basic.choice("verify", ("backend",), None)
            chosen = [x for x in (ht, probe_path, verify) if x]
            if len(chosen) != 1:
                basic.error("htpasswd", "exactly one of 'htpasswd', 'upstream_probe' or "
                            "'verify: backend'", f"{len(chosen)} of them")
            kw["basic"] = BasicIdentity(
                realm=basic.string("realm", str(kw.get("realm") or "stepgate")),
                htpasswd=_resolve(base, ht) if ht else None,
                probe_path=probe_path, probe_cache_ttl=probe_ttl,
                verify_backend=verify == "backend")
            basic.finish()
            if ht and not _resolve(base, ht).is_file():
                errors.append(f"{where}: identity.basic.htpasswd: expected an htpasswd file, "
                              f"found no file at {_resolve(base, ht)}")
        hdr = ident.section("header")
        if hdr is not None:
            kw["header_identity"] = HeaderIdentity(
                hdr.string("name", pattern=_HEADER_NAME, expected="an HTTP header name"))
            hdr.finish()
        ident.finish()

    kw["trusted_proxies"] = tuple(ipaddress.ip_network(n, strict=False) for n in (
        r.get("trusted_proxies", "a list of CIDRs like '10.0.0.0/8'",
              lambda v: v if isinstance(v, list) and all(isinstance(x, str) and _network(x) for x in v)
              else None, []) or []))
    kw["enrollment"] = r.choice("enrollment", ("open", "admin"), "open")

    fac = r.section("factors")
    known = set(BUILTIN_FACTORS)
    if fac is not None:
        totp = fac.section("totp")
        if totp is not None:
            kw["totp_issuer"] = totp.string("issuer", "Stepgate", pattern=r"[^:]+",
                                            expected="an issuer name without ':'")
            totp.finish()
        rec = fac.section("recovery")
        if rec is not None:
            kw["recovery_count"] = rec.integer("count", 10, minimum=1, maximum=100)
            rec.finish()
        channels = []
        for name in list(fac.data):
            if name in BUILTIN_FACTORS:
                continue
            if not isinstance(name, str) or not _CHANNEL.match(name):
                fac.error(str(name), "a channel name of lower-case letters, digits, '_' or '-'",
                          name)
                fac.used.add(name)
                continue
            ch = fac.section(name)
            if ch is not None:
                parsed = _channel(ch, name, base)
                if parsed is not None:
                    channels.append(parsed)
                    if parsed.second_factor:
                        known.add(name)
        kw["channels"] = tuple(channels)
        fac.finish()
    nt = r.section("notify")
    if nt is not None:
        names = [c.name for c in kw.get("channels", ())]  # type: ignore[attr-defined]
        kw["notify_channel"] = nt.choice("channel", names or ["(no channel configured)"], None)
        nt.finish()

    adm = r.section("admin")
    if adm is not None:
        kw["admin_key_env"] = adm.string("key_env", None)
        akf = adm.string("key_file", None)
        kw["admin_key_file"] = _resolve(base, akf) if akf else None
        adm.finish()

    aud = r.section("audit")
    if aud is not None:
        ap = aud.string("path", "-")
        kw["audit_path"] = ap if ap == "-" else str(_resolve(base, ap))
        aud.finish()

    pth = r.section("paths")
    if pth is not None:
        kw["normalize_paths"] = pth.boolean("normalize", False)
        kw["case_insensitive"] = pth.boolean("case_insensitive", False)
        pth.finish()
    kw["max_body"] = r.size("max_body", 1024 * 1024)

    ev = r.section("evidence_headers")
    if ev is not None:
        d = EvidenceHeaders()
        kw["evidence"] = EvidenceHeaders(*(
            ev.string(k, getattr(d, k), pattern=_HEADER_NAME, expected="an HTTP header name")
            for k in ("user", "rule", "factor", "verified_at")))
        ev.finish()

    th = r.section("throttle")
    if th is not None:
        d2 = ThrottleSettings()
        kw["throttle"] = ThrottleSettings(
            challenge_attempts=th.integer("challenge_attempts", d2.challenge_attempts, 1, 100),
            lock_after=th.integer("lock_after", d2.lock_after, 1, 1000),
            lock_base=th.duration("lock_base", d2.lock_base),
            lock_max=th.duration("lock_max", d2.lock_max),
            hard_lock_after=th.integer("hard_lock_after", d2.hard_lock_after, 1, 100000),
            challenges_per_window=th.integer("challenges_per_window", d2.challenges_per_window, 1),
            challenge_window=th.duration("challenge_window", d2.challenge_window),
            sends_per_window=th.integer("sends_per_window", d2.sends_per_window, 1),
            send_window=th.duration("send_window", d2.send_window),
            resend_after=th.duration("resend_after", d2.resend_after),
        )
        th.finish()

    lim = r.section("limits")
    if lim is not None:
        d3 = ClientLimits()
        kw["limits"] = ClientLimits(
            header_timeout=lim.duration("header_timeout", d3.header_timeout, maximum=600),
            body_timeout=lim.duration("body_timeout", d3.body_timeout, maximum=3600),
            connections_per_client=lim.integer("connections_per_client",
                                               d3.connections_per_client, 0, 1_000_000))
        lim.finish()

    mg = r.section("manage")
    if mg is not None:
        binding = mg.choice("binding", ("request", "route", "session"), "request")
        kw["manage"] = ManageSettings(binding=binding, ttl=mg.duration("ttl", 120.0, maximum=900))
        mg.finish()
    kw["challenge_ttl"] = r.duration("challenge_ttl", 300.0, maximum=600)
    kw["ticket_ttl"] = r.duration("ticket_ttl", 600.0, maximum=3600)
    r.finish()

    case_insensitive = bool(kw.get("case_insensitive", False))
    rules = load_rules(_resolve(base, policies_rel or "policies/"), known_factors=known,
                       case_insensitive=case_insensitive, base=base, errors=errors)
    if errors:
        raise ConfigError(errors)
    if any(rule.require for rule in rules.rules) and not (kw.get("basic") or kw.get("header_identity")):
        raise ConfigError([f"{where}: identity: expected 'basic' or 'header' because rules "
                           "require a second factor, found no identity source"])
    return Settings(source=cfg_path.resolve(), upstream=upstream, rules=rules, **kw)  # type: ignore[arg-type]
