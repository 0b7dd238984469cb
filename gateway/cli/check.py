"""``stepgate check`` (everything ``run`` would refuse, every problem at once), ``stepgate
explain`` (which rule decides a request) and ``stepgate schema`` (JSON Schema for editors).

``check`` validates the file and then asks the same functions ``run`` asks: the key ring
and the admin key (gateway.keys), and the files ``run`` opens before serving. Their
verdict decides; the messages here only add where the problem is and how to fix it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gateway.cli.common import config_path, report, settings
from gateway.config.load import CheckedConfig, check_settings
from gateway.config.schema import SCHEMAS
from gateway.config.settings import KeySettings, Settings
from gateway.keys import MIN_KEY_LENGTH, AdminKeyError, KeyError_, KeyRing, load_admin_key
from gateway.store.sqlite import marker_path

KEYS_FIX = "create them with 'stepgate keys generate'"
ADMIN_FIX = (f"use {MIN_KEY_LENGTH} or more random characters, such as a key 'stepgate keys "
             "generate' prints")


def _key_source(where: str, what: str, env: str | None, env_key: str, file: Path | None,
                file_key: str) -> str | None:
    """Where one list of keys should come from and why it does not; None when the source
    is there (whether what it holds is usable is gateway.keys' to say)."""
    if env and os.environ.get(env):
        return None
    if file is not None:
        try:
            file.read_bytes()
        except OSError as exc:
            return (f"{where}: {file_key}: expected a readable file of {what}, found "
                    f"{exc.strerror} at {file} ({KEYS_FIX})")
        return None
    if not env:
        return f"{where}: {env_key}: expected a variable or {file_key}, found neither ({KEYS_FIX})"
    return (f"{where}: {env_key}: expected {what} in environment variable {env}, found it "
            f"unset or empty ({KEYS_FIX})")


def _keys(where: str, keys: KeySettings) -> list[str]:
    try:
        KeyRing.from_settings(keys)
    except (KeyError_, ValueError) as exc:
        sources = [_key_source(where, "signing keys", keys.env, "keys.env", keys.file,
                               "keys.file"),
                   _key_source(where, "data keys", keys.data_env, "keys.data_env",
                               keys.data_file, "keys.data_file")]
        # Both lists at once when both are missing; otherwise gateway.keys' own words.
        return [p for p in sources if p] or [f"{where}: keys: {exc}"]
    return []


def _admin_key(where: str, s: Settings) -> list[str]:
    try:
        load_admin_key(s)
    except UnicodeDecodeError as exc:
        return [f"{where}: admin.key_file: expected a UTF-8 text file, found {exc.reason} "
                f"at {s.admin_key_file}"]
    except AdminKeyError as exc:
        # gateway.keys prefers the variable and falls back to the file; so does this.
        value = os.environ.get(s.admin_key_env, "").strip() if s.admin_key_env else ""
        source, key = f"environment variable {s.admin_key_env}", "admin.key_env"
        if not value and s.admin_key_file is not None:
            try:
                value = s.admin_key_file.read_text(encoding="utf-8").strip()
            except OSError:
                return [f"{where}: {exc}"]  # names the file and why it cannot be read
            source, key = f"file {s.admin_key_file}", "admin.key_file"
        return [f"{where}: {key}: expected at least {MIN_KEY_LENGTH} characters in {source}, "
                f"found {len(value)} ({ADMIN_FIX})"]
    return []


def _audit(where: str, path: str) -> list[str]:
    if path == "-":
        return []
    # `run` opens it for appending before it serves (gateway.audit); nothing is created here.
    p = Path(path)
    folder = p if p.exists() else p.parent
    if p.is_dir():
        reason = "a folder"
    elif not folder.is_dir():
        reason = f"no folder {folder}"
    elif not os.access(folder, os.W_OK):
        reason = "no permission to write"
    else:
        return []
    return [f"{where}: audit.path: expected a file the gateway can append to at {p}, found "
            f"{reason}"]


def _htpasswd(where: str, path: Path) -> list[str]:
    try:
        path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "bytes that are not UTF-8"
        return [f"{where}: identity.basic.htpasswd: expected a readable htpasswd file, found "
                f"{reason} at {path}"]
    return []


def _store(where: str, url: str) -> list[str]:
    if not url.startswith("sqlite:///"):
        return []
    path = url.removeprefix("sqlite:///")
    marker = marker_path(path)
    # The same test the store makes when `run` opens it, without creating anything.
    if path != ":memory:" and not Path(path).exists() and marker.exists():
        return [f"{where}: store: expected the store at {path}, found it missing although "
                f"{marker} says one was created there: restore it from a backup, or run "
                "'stepgate store init --config FILE' to start with an empty store"]
    return []


def startup_problems(checked: CheckedConfig) -> list[str]:
    """What ``run`` would refuse beyond the file itself, for every section that validated:
    missing or unusable keys, a bad admin key, an audit file it cannot open, an unreadable
    htpasswd file, a lost store."""
    s, ok, where = checked.so_far(), checked.valid, checked.where
    problems: list[str] = []
    if "keys" in ok:
        problems += _keys(where, s.keys)
    if "admin" in ok:
        problems += _admin_key(where, s)
    if "audit" in ok:
        problems += _audit(where, s.audit_path)
    if "identity" in ok and s.basic is not None and s.basic.htpasswd is not None:
        problems += _htpasswd(where, s.basic.htpasswd)
    if "store" in ok:
        problems += _store(where, s.store_url)
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    checked = check_settings(config_path(args.config))
    problems = [*checked.errors, *startup_problems(checked)]
    if problems or checked.settings is None:
        report(problems)
        return 2
    s = checked.settings
    kinds: dict[str, int] = {}
    for rule in s.rules.rules:
        kinds[rule.action] = kinds.get(rule.action, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no rules"
    print(f"ok: {s.source.name}: {len(s.rules.rules)} rules ({summary}) from "
          f"{len(s.rules.sources)} file(s); default_action {s.default_action}; "
          f"upstream {s.upstream.url}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.decision.paths import canonicalize
    from gateway.decision.policies import PolicyEngine, RequestView
    from gateway.problems import Problem
    s = settings(args.config)
    path, _, query = args.path.partition("?")
    try:
        cp = canonicalize(path.encode(), normalize=s.normalize_paths)
    except Problem as p:
        print(f"{args.method} {args.path}: rejected with 400 before matching: {p.detail}")
        return 1
    headers = []
    for h in args.header or []:
        k, _, v = h.partition(":")
        headers.append((k.strip().lower().encode(), v.strip().encode()))
    body = args.json.encode() if args.json is not None else None
    req = RequestView(args.method.upper(), cp.decoded, (args.host or "").lower(), query.encode(),
                      headers, body)
    try:
        rule, misses = PolicyEngine(s.rules.rules, s.default_action).explain(req)
    except Problem as p:
        print(f"{args.method} {args.path}: rejected with {p.status}: {p.detail}")
        return 1
    for r, reasons in misses:
        print(f"  skip  {r.describe()}: {'; '.join(reasons)}")
    if rule is None:
        print(f"=> no rule matches; default_action: {s.default_action}")
    else:
        what: str = rule.action
        if rule.require is not None:
            rq = rule.require
            joiner = " and " if rq.all_of else " or "
            what = (f"require {joiner.join(rq.factors)} (binding {rq.binding}, "
                    f"ttl {int(rq.ttl)}s)")
        print(f"=> {rule.describe()} matches: {what}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(SCHEMAS[args.kind](), indent=2))
    return 0
