"""Sections about serving and forwarding: ``listen``/``workers``, the gateway's own surface
(realm, prefix, token header, trusted proxies), ``upstream``, ``paths``, ``limits`` with
``max_body``, and ``evidence_headers``."""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urlsplit

from gateway.config.fields import (
    Custom,
    Duration,
    Flag,
    Group,
    Integer,
    Schema,
    Size,
    Text,
)
from gateway.config.registry import ENV_NAME
from gateway.config.sections.base import HEADER_NAME, Loading, Section, properties_of, read_group
from gateway.config.settings import (
    AccessLogSettings,
    ClientLimits,
    EvidenceHeaders,
    ForwardAuthSettings,
    MetricsSettings,
    Settings,
    UpstreamSettings,
)
from gateway.config.validate import Invalid, Reader, found

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _listen(value: object) -> tuple[str, int] | None:
    if not isinstance(value, str) or ":" not in value:
        return None
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def http_url(value: object) -> str | None:
    """An http(s) URL without query or fragment, trailing slash removed."""
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    return value.rstrip("/")


# What http_url accepts, for editors; the scheme is matched in any case as urlsplit does.
HTTP_URL_SCHEMA: Schema = {"type": "string", "pattern": r"^[hH][tT][tT][pP][sS]?://[^/?#]+[^?#]*$"}


def _networks(value: object) -> tuple[Network, ...] | None:
    if not isinstance(value, list):
        return None
    out, wrong = [], []
    for i, x in enumerate(value):
        try:
            if not isinstance(x, str):
                raise TypeError(x)
            out.append(ipaddress.ip_network(x, strict=False))
        except (TypeError, ValueError):
            wrong.append((f"{found(x)} is not a CIDR like '10.0.0.0/8'", i))
    if wrong:
        raise Invalid.each(wrong)
    return tuple(out)


LISTEN = Group(Settings, (
    Custom("listen", expected="host:port like '127.0.0.1:8080'", convert=_listen,
           derive=lambda d: (d["listen_host"], d["listen_port"]),
           show=lambda v: f"{v[0]}:{v[1]}", json={"type": "string", "pattern": r"^.+:\d{1,5}$"},
           doc="host:port the gateway listens on"),
    Integer("workers", minimum=1, maximum=64, doc="server processes (--workers overrides)"),
))

SURFACE = Group(Settings, (
    Text("realm", pattern=r'[^"\\\r\n]+', expected="a realm without quotes or backslashes",
         doc="realm of the challenges"),
    Text("prefix", pattern=r"/[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*",
         expected="a path like '/.stepgate' (no trailing slash)",
         doc="the gateway's own endpoints; never forwarded"),
    Text("token_header", pattern=HEADER_NAME, expected="an HTTP header name",
         doc="where clients send tokens"),
    Custom("trusted_proxies", expected="a list of CIDRs like '10.0.0.0/8'", convert=_networks,
           show=lambda v: [str(n) for n in v],
           json={"type": "array", "items": {"type": "string", "minLength": 1}},
           doc="CIDRs whose X-Forwarded-*, Forwarded and identity headers are believed"),
))

UPSTREAM = Group(UpstreamSettings, (
    Custom("url", expected="an http:// or https:// URL without query", convert=http_url,
           json=HTTP_URL_SCHEMA, doc="the one upstream"),
    Duration("connect_timeout", doc="per new connection"),
    Duration("read_timeout", doc="per read; exceeded: 504"),
    Integer("success_below", minimum=200, maximum=600,
            doc="a token use is committed when the upstream status is below this"),
    Integer("pool_size", minimum=1, maximum=10000, doc="upstream connections at most"),
    Duration("pool_timeout", maximum=300,
             doc="longest wait for a free upstream connection; then 503 upstream-busy"),
))

PATHS = Group(Settings, (
    Flag("normalize", attr="normalize_paths",
         doc="resolve '//' and dot segments instead of rejecting them"),
    Flag("case_insensitive", doc="match paths ignoring case"),
))

LIMITS = Group(ClientLimits, (
    Duration("header_timeout", maximum=600,
             doc="the request line and headers must arrive within this; then 408; 0: off"),
    Duration("body_timeout", maximum=3600,
             doc="a request body may pause at most this long; 0: off"),
    Integer("connections_per_client", minimum=0, maximum=1_000_000,
            doc="concurrent connections per client address; 0: no cap"),
))
MAX_BODY = Group(Settings, (
    Size("max_body", doc="largest body the gateway reads; 413 beyond"),
))

EVIDENCE = Group(EvidenceHeaders, tuple(
    Text(f.name, pattern=HEADER_NAME, expected="an HTTP header name",
         doc="header added upstream") for f in dataclasses.fields(EvidenceHeaders)))


FORWARD_AUTH = Group(ForwardAuthSettings, (
    Custom("trusted_proxies", expected="a list of CIDRs like '10.0.0.0/8'", convert=_networks,
           show=lambda v: [str(n) for n in v],
           json={"type": "array", "items": {"type": "string", "minLength": 1}},
           doc="CIDRs of the ingresses that may ask the forward-auth endpoints; empty: off"),
    Text("secret_env", pattern=ENV_NAME, expected="an environment variable name",
         doc="environment variable with a secret every forward-auth request must carry in "
             "X-Stepgate-Auth-Secret"),
))


METRICS = Group(MetricsSettings, (
    Custom("listen", expected="host:port like '127.0.0.1:9108'", convert=_listen,
           show=lambda v: f"{v[0]}:{v[1]}", json={"type": "string", "pattern": r"^.+:\d{1,5}$"},
           doc="host:port of the Prometheus listener (never the public port); absent: off"),
))
ACCESS_LOG = Group(AccessLogSettings, (
    Text("path", doc="a file, or '-' for standard output; absent: no access log"),
))
SHUTDOWN = Group(Settings, (
    Duration("shutdown_grace", maximum=3600,
             doc="SIGTERM: in-flight requests may finish within this, then the rest is cut"),
))


def _listen_section(r: Reader, ctx: Loading) -> None:
    values = LISTEN.read(r)
    ctx.values["listen_host"], ctx.values["listen_port"] = values["listen"]
    ctx.values["workers"] = values["workers"]


def _surface(r: Reader, ctx: Loading) -> None:
    ctx.values.update(SURFACE.read(r))


def _upstream(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "upstream", UPSTREAM, required=True)
    if values is not None:
        ctx.values["upstream"] = UpstreamSettings(**{**values, "url": values["url"] or ""})


def _paths(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "paths", PATHS)
    if values is not None:
        ctx.values.update(values)


def _limits(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "limits", LIMITS)
    if values is not None:
        ctx.values["limits"] = ClientLimits(**values)
    ctx.values.update(MAX_BODY.read(r))


def _evidence(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "evidence_headers", EVIDENCE)
    if values is not None:
        ctx.values["evidence"] = EvidenceHeaders(**values)


def _forward_auth(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "forward_auth", FORWARD_AUTH)
    if values is not None:
        ctx.values["forward_auth"] = ForwardAuthSettings(**values)


def _operations(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "metrics", METRICS)
    if values is not None:
        listen = values["listen"]
        public = (ctx.values.get("listen_host"), ctx.values.get("listen_port"))
        if listen is not None and listen[1] == public[1] and \
                (listen[0] == public[0] or "0.0.0.0" in (listen[0], public[0])):  # noqa: S104
            r.error("metrics.listen", "another address than listen (metrics are never on "
                    "the public port)", f"{listen[0]}:{listen[1]}", line=r.line_of("metrics"))
        ctx.values["metrics"] = MetricsSettings(**values)
    values = read_group(r, "access_log", ACCESS_LOG)
    if values is not None:
        path = values["path"]
        if path is not None and path != "-":
            path = str(ctx.resolve(path))  # relative to the configuration file, as every path
        ctx.values["access_log"] = AccessLogSettings(path)
    ctx.values.update(SHUTDOWN.read(r))


SECTIONS = (
    Section("listen", _listen_section, lambda: properties_of(LISTEN)),
    Section("http", _surface, lambda: properties_of(SURFACE)),
    Section("upstream", _upstream, lambda: {"upstream": UPSTREAM.schema(nullable=False)},
            required=("upstream",)),
    Section("paths", _paths, lambda: {"paths": PATHS.schema()}),
    Section("limits", _limits, lambda: {"limits": LIMITS.schema(), **properties_of(MAX_BODY)}),
    Section("evidence_headers", _evidence, lambda: {"evidence_headers": EVIDENCE.schema()}),
    Section("forward_auth", _forward_auth, lambda: {"forward_auth": FORWARD_AUTH.schema()}),
    Section("operations", _operations, lambda: {"metrics": METRICS.schema(),
                                                "access_log": ACCESS_LOG.schema(),
                                                **properties_of(SHUTDOWN)}),
)
