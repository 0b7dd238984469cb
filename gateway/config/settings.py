"""Settings: the configuration as one typed, validated object (loaded by config.load)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config.registry import ChannelKind
from gateway.config.rules import RuleSet

BUILTIN_FACTORS = ("totp", "recovery")


@dataclass(frozen=True)
class UpstreamSettings:
    url: str
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    success_below: int = 400
    pool_size: int = 100
    pool_timeout: float = 5.0


@dataclass(frozen=True)
class ClientLimits:
    """Bounds on what one client connection may hold: slowloris-style clients are cut off."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    connections_per_client: int = 256


@dataclass(frozen=True)
class BasicIdentity:
    realm: str
    htpasswd: Path | None = None
    probe_path: str | None = None
    probe_cache_ttl: float = 30.0
    verify_backend: bool = False


@dataclass(frozen=True)
class HeaderIdentity:
    name: str


@dataclass(frozen=True)
class KeySettings:
    env: str | None = "STEPGATE_KEYS"
    file: Path | None = None
    data_env: str | None = "STEPGATE_DATA_KEYS"
    data_file: Path | None = None


@dataclass(frozen=True)
class ThrottleSettings:
    challenge_attempts: int = 5
    lock_after: int = 10
    lock_base: float = 300.0
    lock_max: float = 3600.0
    hard_lock_after: int = 100
    challenges_per_window: int = 10
    challenge_window: float = 600.0
    sends_per_window: int = 3
    send_window: float = 600.0
    # Codes sent to an address while it is being enrolled, counted apart from challenge
    # sends (docs/configuration.md, Throttling).
    enrolment_sends_per_window: int = 5
    resend_after: float = 30.0


@dataclass(frozen=True)
class EvidenceHeaders:
    user: str = "X-Stepgate-User"
    rule: str = "X-Stepgate-Rule"
    factor: str = "X-Stepgate-Factor"
    verified_at: str = "X-Stepgate-Verified-At"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "stepgate@localhost"
    starttls: bool = False
    username_env: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class ChannelSettings:
    """A delivered-code channel (sms, email, or any name): how its codes travel."""

    name: str
    kind: ChannelKind  # the registered delivery kinds (config.registry)
    command: tuple[str, ...] = ()
    webhook_url: str = ""
    webhook_headers: tuple[tuple[str, str], ...] = ()
    smtp: SmtpSettings | None = None
    timeout: float = 10.0
    digits: int = 6
    ttl: float = 300.0
    address: str = "any"  # e164 | email | any
    second_factor: bool = True  # false: the channel only carries notifications
    subject: str = "Your verification code"


@dataclass(frozen=True)
class ManageSettings:
    binding: Literal["request", "route", "session"] = "request"
    ttl: float = 120.0


@dataclass(frozen=True)
class ForwardAuthSettings:
    """Who may ask the forward-auth endpoints (docs/forward-auth.md): peers in
    ``trusted_proxies`` (none: the endpoints are off), and, when ``secret_env`` names an
    environment variable, only requests carrying its value in X-Stepgate-Auth-Secret."""

    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    secret_env: str | None = None


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics on a listener of their own (docs/operations.md); None: off."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class AccessLogSettings:
    """One JSON line per request (docs/operations.md); None: off."""

    path: str | None = None


@dataclass(frozen=True)
class Settings:
    source: Path
    upstream: UpstreamSettings
    rules: RuleSet  # the validated policy source; decision.policies.Policy matches them
    policies_path: Path | None = None  # the file or folder the rules came from (reloads watch it)
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    workers: int = 1
    realm: str = "stepgate"
    prefix: str = "/.stepgate"
    token_header: str = "X-Stepgate-Token"
    default_action: Literal["allow", "deny"] = "deny"
    store_url: str = "sqlite:///stepgate.db"
    store_timeout: float = 2.0
    redis_url: str | None = None  # hot state in Redis (token uses, counters, lockouts)
    redis_prefix: str = "stepgate:"
    keys: KeySettings = field(default_factory=KeySettings)
    basic: BasicIdentity | None = None
    header_identity: HeaderIdentity | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    enrollment: Literal["open", "admin"] = "open"
    totp_issuer: str = "Stepgate"
    recovery_count: int = 10
    admin_key_env: str | None = None
    admin_key_file: Path | None = None
    audit_path: str = "-"
    normalize_paths: bool = False
    case_insensitive: bool = False
    max_body: int = 1024 * 1024
    evidence: EvidenceHeaders = field(default_factory=EvidenceHeaders)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    limits: ClientLimits = field(default_factory=ClientLimits)
    manage: ManageSettings = field(default_factory=ManageSettings)
    forward_auth: ForwardAuthSettings = field(default_factory=ForwardAuthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    shutdown_grace: float = 30.0  # SIGTERM: in-flight requests may finish within this
    channels: tuple[ChannelSettings, ...] = ()
    notify_channel: str | None = None
    challenge_ttl: float = 300.0
    ticket_ttl: float = 600.0

    @property
    def factors(self) -> tuple[str, ...]:
        """Every second factor the configuration makes available, in a stable order."""
        return BUILTIN_FACTORS + tuple(c.name for c in self.channels if c.second_factor)

    def channel(self, name: str) -> ChannelSettings | None:
        return next((c for c in self.channels if c.name == name), None)
