"""The ``stepgate`` command: its argument parser and ``main``. Each command group lives in
its own module: run (run, demo, demo-upstream), check (check, explain, schema), users
(users, audit), keys and store; common holds the exit statuses every command shares."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from gateway.cli.check import cmd_check, cmd_explain, cmd_schema
from gateway.cli.common import USAGE, CommandError
from gateway.cli.keys import cmd_keys
from gateway.cli.request import register as register_client_commands
from gateway.cli.run import cmd_demo, cmd_demo_upstream, cmd_run
from gateway.cli.store import cmd_store
from gateway.cli.users import cmd_audit, cmd_users
from gateway.config.schema import SCHEMAS
from gateway.keys import AdminKeyError, KeyError_
from gateway.store import StoreMissing, StoreUnavailable


def _version() -> str:
    try:
        return version("stepgate")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stepgate", description="A second-factor gateway.",
        epilog="exit status: 0 done, 1 failed, 2 usage or configuration error "
               "(docs/operations.md, Command line)")
    p.add_argument("--version", action="version", version=f"stepgate {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser, default: str | None = None) -> None:
        sp.add_argument("--config", "-c", default=default,
                        help="configuration file (default: $STEPGATE_CONFIG)")

    def with_keys(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--keys-file", metavar="FILE",
                        help="read the signing and data keys from FILE, as 'stepgate keys "
                        "generate --output' writes it, instead of the configuration's keys "
                        "section (default: $STEPGATE_KEYS_FILE)")

    def with_progress(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--progress", action="store_true",
                        help="report long steps (store creation, migrations) on standard "
                        "error even when it is not a terminal")

    run = sub.add_parser("run", help="serve the gateway")
    with_config(run)
    with_keys(run)
    with_progress(run)
    run.add_argument("--workers", type=int, default=None)
    run.add_argument("--listen", help="host:port, overriding the configuration")
    run.add_argument("--access-log", action="store_true")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="start the demo upstream and the gateway in front of it")
    with_config(demo, "config.example.yaml")
    with_keys(demo)
    with_progress(demo)
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--listen", help="host:port for the gateway")
    demo.add_argument("--access-log", action="store_true")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check", help="validate the configuration and policies, and the "
                           "keys and files 'run' needs")
    with_config(check)
    with_keys(check)
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="which rule matches a request, and why others do not")
    with_config(explain)
    explain.add_argument("method")
    explain.add_argument("path")
    explain.add_argument("--host")
    explain.add_argument("--header", action="append", help="'Name: value', repeatable")
    explain.add_argument("--json", help="a JSON body, for rules with json conditions")
    explain.set_defaults(func=cmd_explain)

    schema = sub.add_parser("schema", help="print the JSON Schema of the configuration file "
                            "or of a policy file, for editors")
    schema.add_argument("kind", choices=sorted(SCHEMAS))
    schema.set_defaults(func=cmd_schema)

    up = sub.add_parser("demo-upstream", help="serve the demo legacy API")
    up.add_argument("--listen", default="127.0.0.1:9000")
    up.set_defaults(func=cmd_demo_upstream)

    keys = sub.add_parser("keys", help="key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="print a new signing key and data key")
    gen.add_argument("--output", "-o", metavar="FILE",
                     help="write them to FILE (a new file, readable by you only) instead")
    gen.set_defaults(func=cmd_keys)

    users = sub.add_parser("users", help="inspect and help users")
    with_config(users)
    users.add_argument("action", choices=["show", "reset", "unlock", "enrol-totp"])
    users.add_argument("user")
    users.add_argument("--label", default="authenticator")
    users.add_argument("--yes", "-y", action="store_true",
                       help="reset without asking for confirmation")
    with_keys(users)
    with_progress(users)
    users.set_defaults(func=cmd_users)
    store = sub.add_parser("store", help="manage the state store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    init = store_sub.add_parser("init", help="create an empty store where the configured one "
                                "is missing (every enrolment is lost)")
    with_config(init)
    with_progress(init)
    init.set_defaults(func=cmd_store)
    migrate = store_sub.add_parser("migrate", help="apply the schema migrations of the "
                                   "configured store now (opening it does too)")
    with_config(migrate)
    with_progress(migrate)
    migrate.set_defaults(func=cmd_store)
    copy = store_sub.add_parser("copy", help="copy every user's factors and recovery codes "
                                "from one store to another")
    copy.add_argument("--from", dest="source", required=True, metavar="URL",
                      help="the store to read, e.g. sqlite:///stepgate.db")
    copy.add_argument("--to", dest="destination", required=True, metavar="URL",
                      help="the store to write, e.g. postgresql://stepgate@db:5432/stepgate")
    copy.add_argument("--yes", "-y", action="store_true",
                      help="copy even when the destination already has users")
    copy.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="longest one store call may take (default: 10)")
    with_progress(copy)
    copy.set_defaults(func=cmd_store)
    audit = sub.add_parser("audit", help="read the audit events kept in the store")
    with_config(audit)
    audit.add_argument("--user")
    audit.add_argument("--since", help="epoch seconds or ISO 8601")
    audit.add_argument("--until", help="epoch seconds or ISO 8601")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    with_progress(audit)
    audit.set_defaults(func=cmd_audit)
    register_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure it expects ends as a message on standard error and
    an exit status (0 done, 1 failed, 2 usage or configuration), never as a traceback."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"stepgate: {exc}", file=sys.stderr)
        for hint in exc.hints:
            print(hint, file=sys.stderr)
        return exc.code
    except (KeyError_, AdminKeyError, StoreMissing) as exc:
        print(f"stepgate: {exc}", file=sys.stderr)
        return USAGE
    except StoreUnavailable as exc:
        print(f"stepgate: the store does not answer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stepgate audit | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


__all__ = ["main", "parser"]
