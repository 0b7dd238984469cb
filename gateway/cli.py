"""The `stepgate` command: run, check, explain, demo, keys and users."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config.load import load_settings
from gateway.config.settings import Settings
from gateway.config.validate import ConfigError

DEMO_KEYS = "stepgate-demo.keys"


def _settings(path: str | None) -> Settings:
    config = path or os.environ.get("STEPGATE_CONFIG")
    if not config:
        raise SystemExit("stepgate: expected --config FILE or STEPGATE_CONFIG")
    try:
        return load_settings(config)
    except ConfigError as exc:
        print(f"stepgate: {len(exc.errors)} problem(s) in the configuration:", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check(args: argparse.Namespace) -> int:
    s = _settings(args.config)
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
    s = _settings(args.config)
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


def _uvicorn_kwargs(s: Settings, args: argparse.Namespace) -> dict[str, Any]:
    host, port = s.listen_host, s.listen_port
    if getattr(args, "listen", None):
        host, _, p = args.listen.rpartition(":")
        port = int(p)
    from gateway.http.server import GatewayHttpProtocol
    return dict(host=host, port=port, loop="uvloop", http=GatewayHttpProtocol, lifespan="on",
                access_log=bool(getattr(args, "access_log", False)), server_header=False,
                date_header=False, log_level="info", proxy_headers=False, ws="none")


def cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.http.app import create_app
    from gateway.keys import AdminKeyError, KeyError_
    s = _settings(args.config)
    workers = args.workers or s.workers
    kw = _uvicorn_kwargs(s, args)
    try:
        app = create_app(s)  # built here too with several workers: key errors surface once
    except (KeyError_, AdminKeyError) as exc:
        print(f"stepgate: {exc}", file=sys.stderr)
        return 2
    problem = asyncio.run(_open_store(s))  # a lost store refuses here, before serving
    if problem is not None:
        print(f"stepgate: {problem}", file=sys.stderr)
        return 1
    if workers > 1:
        os.environ["STEPGATE_CONFIG"] = str(s.source)
        uvicorn.run("gateway.http.app:app_from_env", factory=True, workers=workers, **kw)
        return 0
    uvicorn.run(app, **kw)
    return 0


async def _open_store(s: Settings, create: bool = False) -> str | None:
    from gateway.store import StoreMissing, StoreUnavailable, open_store
    store = open_store(s.store_url, s.store_timeout)
    try:
        await store.open(create=create)
    except (StoreMissing, StoreUnavailable) as exc:
        return str(exc)
    finally:
        await store.close()
    return None


def cmd_store(args: argparse.Namespace) -> int:
    s = _settings(args.config)
    path = s.store_url.removeprefix("sqlite:///")
    if Path(path).exists():
        print(f"stepgate: the store {path} already exists; move it away first to start with "
              "an empty store", file=sys.stderr)
        return 1
    problem = asyncio.run(_open_store(s, create=True))
    if problem is not None:
        print(f"stepgate: {problem}", file=sys.stderr)
        return 1
    print(f"created an empty store at {path}; tokens issued against any earlier store are "
          "refused")
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from gateway.demo import serve
    host, _, port = args.listen.rpartition(":")
    serve(host, int(port))
    return 0


def _ensure_demo_keys() -> None:
    from gateway.keys import generate_data_key, generate_signing_key
    path = Path(DEMO_KEYS)
    if not path.exists():
        path.write_text(json.dumps({"STEPGATE_KEYS": generate_signing_key(),
                                    "STEPGATE_DATA_KEYS": generate_data_key()}) + "\n")
        path.chmod(0o600)
        print(f"stepgate demo: wrote new demo keys to {path}")
    for name, value in json.loads(path.read_text()).items():
        os.environ.setdefault(name, value)


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo upstream and the gateway in one command, on config.example.yaml."""
    _ensure_demo_keys()
    s = _settings(args.config)
    # uvicorn re-raises the signal that stopped it; turning SIGTERM into SystemExit lets
    # the `finally` below stop the demo upstream too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    upstream = subprocess.Popen([sys.executable, "-m", "gateway", "demo-upstream", "--listen",
                                 s.upstream.url.split("//", 1)[1]])
    try:
        time.sleep(0.5)
        print(f"stepgate demo: upstream at {s.upstream.url}, gateway at "
              f"http://{s.listen_host}:{s.listen_port} (Ctrl-C stops both)")
        return cmd_run(args)
    finally:
        upstream.terminate()
        upstream.wait(5)


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.keys import generate_data_key, generate_signing_key
    print(f"STEPGATE_KEYS={generate_signing_key()}")
    print(f"STEPGATE_DATA_KEYS={generate_data_key()}")
    print("# Put the newest key first; keep old ones after a comma while tokens they signed "
          "may still be in use.", file=sys.stderr)
    return 0


async def _users(args: argparse.Namespace) -> int:
    from gateway.factors.totp import new_secret, otpauth_uri, seal, terminal_qr
    from gateway.keys import KeyRing
    from gateway.store import FactorRecord, open_store
    s = _settings(args.config)
    store = open_store(s.store_url, s.store_timeout)
    await store.open()
    try:
        user = args.user
        if args.action == "show":
            records = await store.factors(user)
            lock = await store.user_lock(user)
            doc = {"user": user, "factors": [
                {"id": r.id, "type": r.type, "status": r.status, "label": r.label}
                for r in records], "recovery_codes_left": await store.recovery_codes_left(user),
                "failures": lock.failures, "locked": lock.hard or lock.locked_until > time.time(),
                "hard_locked": lock.hard}
            print(json.dumps(doc, indent=2))
        elif args.action == "reset":
            n = await store.delete_user(user)
            print(f"reset {user}: removed {n} factor(s) and recovery code(s)")
        elif args.action == "unlock":
            await store.unlock(user)
            print(f"unlocked {user}")
        elif args.action == "enrol-totp":
            keys = KeyRing.from_settings(s.keys)
            secret = new_secret()
            fid = "f_" + secrets.token_urlsafe(12)
            await store.add_factor(FactorRecord(
                id=fid, user=user, type="totp", status="active", label=args.label,
                secret=seal(keys, user, fid, secret), created_at=time.time()))
            uri = otpauth_uri(secret, user, s.totp_issuer)
            print(terminal_qr(uri))
            print(uri)
            print(f"enrolled TOTP factor {fid} for {user} (active)")
        return 0
    finally:
        await store.close()


def _with_store(run: Any) -> int:
    from gateway.store import StoreMissing, StoreUnavailable
    try:
        return int(asyncio.run(run))
    except (StoreMissing, StoreUnavailable) as exc:
        print(f"stepgate: {exc}", file=sys.stderr)
        return 1


def cmd_users(args: argparse.Namespace) -> int:
    return _with_store(_users(args))


async def _audit(args: argparse.Namespace) -> int:
    from gateway.api.admin import _time
    from gateway.problems import Problem
    from gateway.store import open_store
    s = _settings(args.config)
    try:
        since = _time(args.since, "since") if args.since else None
        until = _time(args.until, "until") if args.until else None
    except Problem as p:
        print(f"stepgate: {p.detail}", file=sys.stderr)
        return 2
    store = open_store(s.store_url, s.store_timeout)
    await store.open()
    try:
        for event in await store.audit(args.user, since, until, args.limit):
            print(json.dumps(event, separators=(",", ":")))
    finally:
        await store.close()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    return _with_store(_audit(args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stepgate", description="A second-factor gateway.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser, default: str | None = None) -> None:
        sp.add_argument("--config", "-c", default=default,
                        help="configuration file (default: $STEPGATE_CONFIG)")

    run = sub.add_parser("run", help="serve the gateway")
    with_config(run)
    run.add_argument("--workers", type=int, default=None)
    run.add_argument("--listen", help="host:port, overriding the configuration")
    run.add_argument("--access-log", action="store_true")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="start the demo upstream and the gateway in front of it")
    with_config(demo, "config.example.yaml")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--listen", help="host:port for the gateway")
    demo.add_argument("--access-log", action="store_true")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check", help="validate the configuration and policies")
    with_config(check)
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="which rule matches a request, and why others do not")
    with_config(explain)
    explain.add_argument("method")
    explain.add_argument("path")
    explain.add_argument("--host")
    explain.add_argument("--header", action="append", help="'Name: value', repeatable")
    explain.add_argument("--json", help="a JSON body, for rules with json conditions")
    explain.set_defaults(func=cmd_explain)

    up = sub.add_parser("demo-upstream", help="serve the demo legacy API")
    up.add_argument("--listen", default="127.0.0.1:9000")
    up.set_defaults(func=cmd_demo_upstream)

    keys = sub.add_parser("keys", help="key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="print a new signing key and data key")
    gen.set_defaults(func=cmd_keys)

    users = sub.add_parser("users", help="inspect and help users")
    with_config(users)
    users.add_argument("action", choices=["show", "reset", "unlock", "enrol-totp"])
    users.add_argument("user")
    users.add_argument("--label", default="authenticator")
    users.set_defaults(func=cmd_users)
    store = sub.add_parser("store", help="manage the state store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    init = store_sub.add_parser("init", help="create an empty store where the configured one "
                                "is missing (every enrolment is lost)")
    with_config(init)
    init.set_defaults(func=cmd_store)
    audit = sub.add_parser("audit", help="read the audit events kept in the store")
    with_config(audit)
    audit.add_argument("--user")
    audit.add_argument("--since", help="epoch seconds or ISO 8601")
    audit.add_argument("--until", help="epoch seconds or ISO 8601")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(func=cmd_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)
