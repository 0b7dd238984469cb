"""``stepgate users`` (show, reset, unlock, enrol TOTP) and ``stepgate audit``: helping users
and reading what happened, straight from the store (docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Coroutine
from typing import Any

from gateway.cli.common import settings


async def _users(args: argparse.Namespace) -> int:
    from gateway.factors.totp import TotpFactor, new_secret, otpauth_uri, terminal_qr
    from gateway.keys import KeyRing
    from gateway.store import open_store
    s = settings(args.config)
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
            await store.add_factor(TotpFactor(store, keys, s.totp_issuer).record(
                user, fid, secret, label=args.label, now=time.time()))
            uri = otpauth_uri(secret, user, s.totp_issuer)
            print(terminal_qr(uri))
            print(uri)
            print(f"enrolled TOTP factor {fid} for {user} (active)")
        return 0
    finally:
        await store.close()


def _with_store(run: Coroutine[Any, Any, int]) -> int:
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
    s = settings(args.config)
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
