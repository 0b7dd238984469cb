"""Configuration and policy loading: typed values, and every error at once, each fully located."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.config.load import load_settings
from gateway.config.validate import ConfigError, parse_duration, parse_size

BASE = {
    "upstream": {"url": "http://127.0.0.1:9000"},
    "policies": "policies/",
    "identity": {"basic": {"verify": "backend"}},
}
RULE = {"name": "ok", "match": {"paths": ["/a"]}, "action": "allow"}


def write(tmp_path: Path, cfg: dict, rules: list | dict | None = None,
          files: dict[str, str] | None = None) -> Path:
    pol = tmp_path / "policies"
    pol.mkdir(exist_ok=True)
    if files:
        for name, text in files.items():
            (pol / name).write_text(text)
    else:
        (pol / "rules.yaml").write_text(yaml.safe_dump({"rules": rules if rules is not None else [RULE]}))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    return err.value.errors


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {**BASE, "store": "sqlite:///data/x.db",
                                       "upstream": {"url": "http://u:1/", "read_timeout": "2m"},
                                       "max_body": "2MiB"}))
    assert s.store_url == f"sqlite:///{tmp_path}/data/x.db"
    assert s.upstream.url == "http://u:1"
    assert s.upstream.read_timeout == 120.0
    assert s.upstream.connect_timeout == 2.0
    assert s.max_body == 2 * 1024 * 1024
    assert s.prefix == "/.stepgate" and s.token_header == "X-Stepgate-Token"
    assert s.default_action == "deny"
    assert [r.name for r in s.rules.rules] == ["ok"]


def test_every_config_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "listen": "nowhere",
        "workers": 0,
        "upstream": {"url": "ftp://x", "connect_timeout": "soon", "retries": 3},
        "default_action": "maybe",
        "prefix": "stepgate/",
        "trusted_proxies": ["10.0.0.0/33"],
        "enrollment": "closed",
        "paths": {"normalize": "yes"},
        "colour": "blue",
        "policies": "policies/",
        "identity": {"basic": {"verify": "backend"}},
    })
    errs = errors_of(path)
    where = str(path)
    # yaml.safe_dump writes the keys in name order; problems come in line order.
    assert errs == [
        f"{where}:1: unknown key 'colour'; expected one of 'access_log', 'admin', 'audit', 'challenge_ttl', "
        "'default_action', 'enrollment', 'evidence_headers', 'factors', 'forward_auth', "
        "'identity', 'keys', "
        "'limits', 'listen', 'manage', 'max_body', 'metrics', 'notify', 'paths', 'policies', 'prefix', "
        "'realm', 'redis', 'redis_prefix', 'shutdown_grace', 'store', 'store_timeout', 'throttle', 'ticket_ttl', 'token_header', "
        "'trusted_proxies', 'upstream', 'workers'",
        f"{where}:2: default_action: expected one of 'allow', 'deny', found 'maybe'",
        f"{where}:3: enrollment: expected one of 'open', 'admin', found 'closed'",
        f"{where}:7: listen: expected host:port like '127.0.0.1:8080', found 'nowhere'",
        f"{where}:9: paths.normalize: expected true or false, found 'yes'",
        f"{where}:11: prefix: expected a path like '/.stepgate' (no trailing slash), found 'stepgate/'",
        f"{where}:13: trusted_proxies: '10.0.0.0/33' is not a CIDR like '10.0.0.0/8'",
        f"{where}:15: upstream.connect_timeout: expected a duration like '30s', '2m' or '1h', found 'soon'",
        f"{where}:16: upstream: unknown key 'retries'; expected one of 'connect_timeout', "
        "'pool_size', 'pool_timeout', 'read_timeout', 'success_below', 'url'",
        f"{where}:17: upstream.url: expected an http:// or https:// URL without query, found 'ftp://x'",
        f"{where}:18: workers: expected an integer >= 1 and <= 64, found the number 0",
    ]


def located(errors: list[str], file: str, message: str) -> bool:
    """Whether one of ``errors`` is ``file:LINE: message...``: the line itself is asserted in
    tests/config/test_error_messages.py."""
    pattern = re.compile(rf"{re.escape(file)}:\d+: {re.escape(message)}")
    return any(pattern.match(e) for e in errors)


POLICY_ERRORS = [
    ({"name": "t", "match": {"paths": ["/a"]}, "require": {"factors": ["totp"], "binding": "sesion"}},
     "rule #1 ('t'): require.binding: expected one of 'request', 'route', 'session', found 'sesion'"),
    ({"name": "t", "match": {"paths": ["a/b"]}, "action": "allow"},
     "rule #1 ('t'): match.paths: 'a/b' does not start with '/'"),
    ({"name": "t", "match": {"paths": ["/a/**/b"]}, "action": "allow"},
     "rule #1 ('t'): match.paths: '/a/**/b' has '**' before its end: '**' may only end a pattern"),
    ({"name": "t", "match": {"methods": ["get"]}, "action": "allow"},
     "rule #1 ('t'): match.methods: 'get' is not upper case (write 'GET')"),
    ({"name": "t", "match": {"paths": ["/a"]}, "action": "permit"},
     "rule #1 ('t'): action: expected one of 'allow', 'deny', 'require', found 'permit'"),
    ({"name": "t", "match": {"paths": ["/a"]}},
     "rule #1 ('t'): require: expected a 'require' section or 'action: allow|deny', found nothing"),
    ({"name": "t", "match": {"paths": ["/a"]}, "require": {"factors": ["sms"]}},
     "rule #1 ('t'): require.factors: expected factors the configuration enables (recovery, totp), found 'sms'"),
    ({"name": "t", "match": {"paths": ["/a"]}, "require": {"factors": ["totp"], "binding": "session", "ttl": "1h"}},
     "rule #1 ('t'): require.ttl: expected a duration like '30s', '2m' or '1h' of at most 900s, found '1h'"),
    ({"name": "t", "match": {"paths": ["/a"], "json": {"amount": {"gt": 1}}}, "action": "allow"},
     "rule #1 ('t'): match.json.amount: expected a JSON path like '$.amount' or '$.items[0].id', found 'amount'"),
    ({"name": "t", "match": {"paths": ["/a"], "json": {"$.amount": {"greater": 1}}}, "action": "allow"},
     "rule #1 ('t'): match.json.$.amount.greater: expected one of 'eq', 'ne', 'gt'"),
    ({"name": "t", "match": {"paths": ["/a"], "json": {"$.amount": {"gt": "big"}}}, "action": "allow"},
     "rule #1 ('t'): match.json.$.amount.gt: expected a number, found 'big'"),
    ({"name": "t", "match": {"paths": ["/a"], "host": "x"}, "action": "allow"},
     "rule #1 ('t'): match: unknown key 'host', did you mean 'hosts'?"),
    ({"name": "t", "match": {"paths": ["/a"]}, "action": "allow", "extra": 1},
     "rule #1 ('t'): unknown key 'extra'; expected one of 'action', 'match', 'name', 'require'"),
    ({"match": {"paths": ["/a"]}, "action": "allow"},
     "rule #1: name: expected a name of letters, digits, '_', '.' or '-', found nothing"),
    ({"name": "t", "match": {"paths": ["/a"]}, "require": {"factors": ["totp"], "binding": "route", "scope": "s"}},
     "rule #1 ('t'): require.scope: expected no scope (only session binding shares a scope), found 's'"),
    ("not a mapping", "rule #1: expected a mapping, found 'not a mapping'"),
]


@pytest.mark.parametrize("rule,message", POLICY_ERRORS)
def test_policy_error_names_file_rule_key_expected_found(tmp_path: Path, rule: object,
                                                         message: str) -> None:
    errs = errors_of(write(tmp_path, BASE, [rule]))
    assert located(errs, "policies/rules.yaml", message), errs


def test_policy_errors_across_files_all_reported(tmp_path: Path) -> None:
    errs = errors_of(write(tmp_path, BASE, files={
        "10-a.yaml": yaml.safe_dump({"rules": [RULE, {"name": "x", "match": {}, "action": "nope"}]}),
        "20-b.yaml": yaml.safe_dump({"rules": [RULE]}),
        "30-c.yaml": "rules: [unclosed",
    }))
    assert errs == [
        "policies/10-a.yaml:7: rule #2 ('x'): action: expected one of 'allow', 'deny', "
        "'require', found 'nope'",
        "policies/20-b.yaml:6: rule #1 ('ok'): name: expected a unique rule name, found 'ok', "
        "already the name of rule #1 in policies/10-a.yaml:6",
        "policies/30-c.yaml:1:8: YAML syntax error: this '[' is never closed; add ']' where "
        "the list ends",
    ]


def test_folder_rules_concatenate_in_name_order(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE, files={
        "20-b.yaml": yaml.safe_dump({"rules": [{**RULE, "name": "second"}]}),
        "10-a.yaml": yaml.safe_dump({"rules": [{**RULE, "name": "first"}]}),
        "notes.txt": "ignored",
    }))
    assert [r.name for r in s.rules.rules] == ["first", "second"]


def test_require_rules_need_an_identity_source(tmp_path: Path) -> None:
    cfg = {k: v for k, v in BASE.items() if k != "identity"}
    errs = errors_of(write(tmp_path, cfg, [{"name": "r", "match": {"paths": ["/a"]},
                                            "require": {"factors": ["totp"]}}]))
    assert errs == [f"{tmp_path / 'config.yaml'}: identity: expected 'basic' or 'header' because "
                    "rules require a second factor, found no identity source"]


def test_missing_files(tmp_path: Path) -> None:
    errs = errors_of(write(tmp_path, {**BASE, "policies": "nope/",
                                      "identity": {"basic": {"htpasswd": "missing.htpasswd"}}}))
    where = tmp_path / "config.yaml"
    assert errs == [
        f"{where}:3: identity.basic.htpasswd: expected an htpasswd file, found no file at "
        f"{tmp_path / 'missing.htpasswd'}",
        f"{where}:4: policies: expected a YAML file or a folder of them, found no such file or "
        "folder",
    ]
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "absent.yaml")
    assert "expected a readable configuration file" in err.value.errors[0]


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("2m", 120), ("1h", 3600), ("250ms", 0.25),
                                          (5, 5), ("1d", 86400), ("soon", None), ("-1s", None),
                                          (True, None), ("2 m", None)])
def test_durations(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,size", [("1MiB", 1048576), ("10KiB", 10240), (512, 512),
                                       ("1MB", 1000000), ("lots", None)])
def test_sizes(text: object, size: int | None) -> None:
    assert parse_size(text) == size


def test_channels(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {**BASE, "factors": {
        "sms": {"deliver": {"command": ["./bin/send-sms", "--fast"], "timeout": "5s"}},
        "email": {"deliver": {"smtp": {"host": "127.0.0.1", "port": 2525,
                                       "sender": "2fa@example.com"}}, "second_factor": False},
        "pager": {"deliver": {"webhook": {"url": "http://hooks.local/p"}}, "digits": 8}},
        "notify": {"channel": "email"}}))
    assert s.factors == ("totp", "recovery", "pager", "sms")  # yaml.safe_dump sorts keys
    sms = s.channel("sms")
    assert sms is not None and sms.command == (str(tmp_path / "bin/send-sms"), "--fast")
    assert sms.address == "e164" and sms.timeout == 5.0
    email = s.channel("email")
    assert email is not None and email.address == "email" and email.smtp is not None
    assert s.notify_channel == "email"


CHANNEL_ERRORS = [
    ({"sms": {"deliver": {}}},
     "factors.sms.deliver: expected exactly one of 'command', 'webhook' or 'smtp', found nothing"),
    ({"sms": {"deliver": {"command": ["x"]}, "digits": 4}},
     "factors.sms.digits: expected an integer >= 6 and <= 8, found the number 4"),
    ({"sms": {"deliver": {"command": ["x"]}, "ttl": "1h"}},
     "factors.sms.ttl: expected a duration like '30s', '2m' or '1h' of at most 600s, found '1h'"),
    ({"sms": {"deliver": {"webhook": {"url": "ftp://x"}}}},
     "factors.sms.deliver.webhook.url: expected an http:// or https:// URL, found 'ftp://x'"),
    ({"Bad Name": {"deliver": {"command": ["x"]}}},
     "factors.Bad Name: expected a channel name of lower-case letters, digits, '_' or '-'"),
    ({"sms": {"deliver": {"command": ["x"]}, "address": "phone"}},
     "factors.sms.address: expected one of 'e164', 'email', 'any', found 'phone'"),
]


@pytest.mark.parametrize("factors,message", CHANNEL_ERRORS)
def test_channel_errors(tmp_path: Path, factors: dict, message: str) -> None:
    errs = errors_of(write(tmp_path, {**BASE, "factors": factors}))
    assert located(errs, str(tmp_path / "config.yaml"), message), errs


def test_notify_must_name_a_channel(tmp_path: Path) -> None:
    errs = errors_of(write(tmp_path, {**BASE, "notify": {"channel": "pigeon"}, "factors": {
        "sms": {"deliver": {"command": ["x"]}}}}))
    assert errs == [f"{tmp_path / 'config.yaml'}:10: notify.channel: expected one of 'sms', "
                    "found 'pigeon'"]


def test_notification_only_channel_cannot_be_required(tmp_path: Path) -> None:
    errs = errors_of(write(tmp_path, {**BASE, "factors": {
        "email": {"deliver": {"smtp": {"host": "h"}}, "second_factor": False}}},
        [{"name": "r", "match": {"paths": ["/a"]}, "require": {"factors": ["email"]}}]))
    assert "expected factors the configuration enables (recovery, totp), found 'email'" in errs[0]
