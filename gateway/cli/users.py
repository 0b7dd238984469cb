"""``stepgate users`` (show, reset, unlock, enrol TOTP) and ``stepgate audit``: helping users
and reading what happened, straight from the store (docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

from gateway.cli.common import USAGE, CommandError, load_keys, settings
from gateway.cli.store import open_configured
from gateway.config.settings import Settings
from gateway.keys import KeyRing
from gateway.store import Store

_BARE = re.compile(r'^[^\s"=\\]+$')


def iso(ts: float | None) -> str | None:
    """UTC, to the second: 2026-11-25T02:41:07Z."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, option: str) -> float:
    """Epoch seconds, or ISO 8601 (UTC when it names no offset, as ``audit`` prints)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{option}: expected epoch seconds or ISO 8601 such as "
                           f"2026-11-25T02:41:07Z, found {value!r}", USAGE) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def confirm(what: str, yes: bool) -> None:
    """Go on with ``--yes``, or when the person at the terminal answers y to ``what``;
    otherwise raise (exit 2 without a terminal to ask on, 1 when the answer is no)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"{what}; add --yes to confirm (standard input is not a terminal "
                           "to ask on)", USAGE)
    print(f"{what}. Go on? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed; nothing changed")


async def _show(store: Store, user: str) -> dict[str, Any]:
    records = await store.factors(user)
    lock = await store.user_lock(user)
    codes = await store.recovery_codes_left(user)
    if not records and not codes and not lock.failures and not lock.hard \
            and not await store.audit(user, None, None, 1):
        raise CommandError(f"no user {user!r} in the store: no factors, recovery codes, failed "
                           "attempts or audit events")
    return {"user": user, "factors": [
        {"id": r.id, "type": r.type, "status": r.status, "label": r.label,
         "created_at": iso(r.created_at), "last_used_at": iso(r.last_used_at)}
        for r in records], "recovery_codes_left": codes, "failures": lock.failures,
        "locked": lock.hard or lock.locked_until > time.time(), "hard_locked": lock.hard}


async def _users(args: argparse.Namespace, s: Settings, keys: KeyRing | None) -> int:
    from gateway.factors.totp import TotpFactor, new_secret, otpauth_uri, terminal_qr
    # Only enrolling writes something worth a new store; the others read or undo.
    store = await open_configured(s, args, existing=args.action != "enrol-totp")
    try:
        user = args.user
        if args.action == "show":
            print(json.dumps(await _show(store, user), indent=2))
        elif args.action == "reset":
            factors = len(await store.factors(user))
            codes = await store.recovery_codes_left(user)
            confirm(f"resetting {user} removes {factors} factor(s) and {codes} recovery "
                    "code(s) and revokes their tokens", args.yes)
            n = await store.delete_user(user)
            print(f"reset {user}: removed {n} factor(s) and recovery code(s)")
        elif args.action == "unlock":
            await store.unlock(user)
            print(f"unlocked {user}")
        elif args.action == "enrol-totp":
            assert keys is not None
            secret = new_secret()
            fid = "f_" + secrets.token_urlsafe(12)
            await store.add_factor(TotpFactor(store, keys, s.totp_issuer).record(
                user, fid, secret, label=args.label, now=time.time()))
            uri = otpauth_uri(secret, user, s.totp_issuer)
            print(terminal_qr(uri))
            print(uri)
            print(f"enrolled TOTP factor {fid} for {user} (active)")
        return 0
    finally:
        await store.close()


def cmd_users(args: argparse.Namespace) -> int:
    s = settings(args.config)
    # Before the store is opened: a missing key is a configuration problem, found first.
    keys = load_keys(s, args) if args.action == "enrol-totp" else None
    return asyncio.run(_users(args, s, keys))


def audit_line(event: dict[str, Any]) -> str:
    """One event for people: its time, its name, then the other fields as key=value."""
    rest = " ".join(f"{k}={v if isinstance(v, str) and _BARE.match(v) else json.dumps(v)}"
                    for k, v in event.items() if k not in ("ts", "event"))
    return f"{iso(event.get('ts', 0.0))}  {event.get('event', '?')}  {rest}".rstrip()


async def _events(args: argparse.Namespace, s: Settings, since: float | None,
                  until: float | None) -> list[dict[str, Any]]:
    store = await open_configured(s, args, existing=True)
    try:
        return await store.audit(args.user, since, until, args.limit)
    finally:
        await store.close()


def cmd_audit(args: argparse.Namespace) -> int:
    s = settings(args.config)
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    events = asyncio.run(_events(args, s, since, until))
    for event in events:
        if args.json:
            print(json.dumps({"time": iso(event.get("ts", 0.0)), **event},
                             separators=(",", ":")))
        else:
            print(audit_line(event))
    return 0
