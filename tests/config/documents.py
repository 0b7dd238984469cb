"""Configuration and policy documents that use every mapping the formats have, and a helper
that loads them from a folder the way ``stepgate run`` would."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.config.load import load_settings
from gateway.config.validate import ConfigError

# Every section and every nested mapping of the configuration file.
CONFIG: dict[str, Any] = {
    "listen": "0.0.0.0:8081", "workers": 2,
    "upstream": {"url": "http://127.0.0.1:9000", "connect_timeout": "1s", "read_timeout": 20,
                 "success_below": 500, "pool_size": 10, "pool_timeout": "4s"},
    "realm": "r", "prefix": "/.sg", "token_header": "X-T", "default_action": "allow",
    "store": "sqlite:///s.db", "store_timeout": "3s",
    "redis": "redis://127.0.0.1:6379/2", "redis_prefix": "sg:",
    "keys": {"env": "K", "data_env": "D"},
    "identity": {"basic": {"verify": "backend", "realm": "b"}, "header": {"name": "X-User"}},
    "trusted_proxies": ["10.0.0.0/8"], "enrollment": "admin",
    "factors": {
        "totp": {"issuer": "I"}, "recovery": {"count": 5},
        "sms": {"deliver": {"command": ["./send"], "timeout": "3s"}, "digits": 7, "ttl": "2m",
                "address": "e164"},
        "email": {"deliver": {"smtp": {"host": "h", "port": 26, "sender": "a@b",
                                       "starttls": True, "username_env": "U",
                                       "password_env": "P"}},
                  "second_factor": False, "subject": "S"},
        "pager": {"deliver": {"webhook": {"url": "http://h/p", "headers": {"A": "b"}}},
                  "address": "any"},
    },
    "notify": {"channel": "email"},
    "admin": {"key_env": "A", "key_file": "admin.key"}, "audit": {"path": "audit.log"},
    "paths": {"normalize": True, "case_insensitive": True}, "max_body": "2MiB",
    "evidence_headers": {"user": "X-U", "rule": "X-R", "factor": "X-F", "verified_at": "X-V"},
    "forward_auth": {"trusted_proxies": ["10.9.0.0/16"], "secret_env": "FA_SECRET_FOR_TESTS"},
    "metrics": {"listen": "127.0.0.1:9199"}, "access_log": {"path": "-"}, "shutdown_grace": "5s",
    "throttle": {"challenge_attempts": 3, "lock_after": 4, "lock_base": "1m", "lock_max": "2h",
                 "hard_lock_after": 50, "challenges_per_window": 2, "challenge_window": "1m",
                 "sends_per_window": 1, "send_window": "1h", "resend_after": "10s"},
    "limits": {"header_timeout": "5s", "body_timeout": 0, "connections_per_client": 9},
    "manage": {"binding": "route", "ttl": "10m"}, "challenge_ttl": "1m", "ticket_ttl": "2m",
}
# The same with the other Basic backend, whose settings are a mapping of their own.
CONFIG_PROBE = copy.deepcopy(CONFIG)
CONFIG_PROBE["identity"]["basic"] = {"upstream_probe": {"path": "/me", "cache_ttl": "1m"}}

# Every key of a rule, of match and of require, and every kind of condition.
POLICY: dict[str, Any] = {"rules": [
    {"name": "transfer", "action": "require",
     "match": {"methods": ["POST"], "paths": ["/a/{id}/**"], "hosts": ["*.example.com"],
               "query": {"q": {"eq": "1"}}, "headers": {"X-A": {"present": True}},
               "json": {"$.amount": {"gt": 5, "regex": "x"}}},
     "require": {"factors": ["totp", "sms"], "binding": "request", "ttl": "1m", "uses": 1,
                 "max_age": "5m", "unenrolled": "deny", "challenge_style": "rfc9470",
                 "acr_values": "urn:x"}},
    {"name": "admin", "match": {"paths": ["/admin"]},
     "require": {"factors": {"all_of": ["totp", "recovery"]}, "binding": "session",
                 "scope": "admin"}},
    {"name": "public", "match": {"paths": "/public/**"}, "action": "allow"},
]}


def write(folder: Path, config: dict[str, Any], policy: Any = None) -> Path:
    """``config.yaml`` and ``policies/rules.yaml`` in ``folder`` (the default location)."""
    (folder / "policies").mkdir(exist_ok=True)
    (folder / "policies" / "rules.yaml").write_text(
        yaml.safe_dump(POLICY if policy is None else policy))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def outcome(path: Path) -> tuple[str, Any]:
    """("ok", settings) or ("errors", [...]), to compare two loads; without line numbers,
    which move when one of the two documents writes one key more."""
    try:
        return "ok", load_settings(path)
    except ConfigError as exc:
        return "errors", sorted(re.sub(r"^([^:]+):\d+(?::\d+)?: ", r"\1: ", e)
                                for e in exc.errors)
