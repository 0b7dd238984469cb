"""The ``stepgate`` command: its argument parser and ``main``. Each command group lives in
its own module: run (run, demo, demo-upstream), check (check, explain, schema), users
(users, audit), keys and store."""

from __future__ import annotations

import argparse

from gateway.cli.check import cmd_check, cmd_explain, cmd_schema
from gateway.cli.keys import cmd_keys
from gateway.cli.request import register as register_client_commands
from gateway.cli.run import cmd_demo, cmd_demo_upstream, cmd_run
from gateway.cli.store import cmd_store
from gateway.cli.users import cmd_audit, cmd_users
from gateway.config.schema import SCHEMAS


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

    check = sub.add_parser("check", help="validate the configuration and policies, and the "
                           "keys and files 'run' needs")
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
    register_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


__all__ = ["main", "parser"]
