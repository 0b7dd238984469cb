"""``stepgate store init`` (an empty store where a lost one was, docs/operations.md, A lost
store), ``store migrate`` (the schema migrations, explicitly) and ``store copy`` (every
user's factors and recovery codes from one store to another), and opening the store the way
``run`` does before it serves, with a progress line while schema migrations run."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from gateway.cli.common import FAILURE, USAGE, CommandError, progress, progress_enabled, settings
from gateway.config.settings import Settings
from gateway.config.urls import redacted, store_url
from gateway.config.validate import Invalid
from gateway.store import Store, StoreMissing, StoreUnavailable, open_store
from gateway.store.sqlite import marker_path

# How many users ``store copy`` copies between two progress lines.
PROGRESS_EVERY = 100


def sqlite_version(url: str) -> int | None:
    """The schema version of an SQLite store's file (0: none yet), or None for a store of
    another kind."""
    if not url.startswith("sqlite:///") or url.endswith("/:memory:"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file():
        return 0
    try:
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            row = db.execute("SELECT version FROM schema_version").fetchone()
            return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0  # no schema yet (or unreadable: opening the store will say so)


def pending_migrations(url: str) -> tuple[int, int] | None:
    """(from, to) schema versions when opening the store will migrate it, else None."""
    from gateway.store.sqlite import MIGRATIONS
    version = sqlite_version(url)
    if version is None:
        return None
    return (version, len(MIGRATIONS)) if version < len(MIGRATIONS) else None


def shown_store(url: str) -> str:
    """A store as messages name it: an SQLite file by its path, any other by its URL
    without the password."""
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redacted(url)


def sqlite_path(url: str) -> Path | None:
    path = url.removeprefix("sqlite:///")
    return None if path == url or path == ":memory:" else Path(path)


async def open_configured(s: Settings, args: argparse.Namespace, create: bool = False,
                          existing: bool = False) -> Store:
    """The configured store (with Redis for the hot state when ``redis`` is set), opened
    (and migrated) as ``run`` opens it. A lost store exits 2 (what ``stepgate check``
    reports too), a store that does not answer exits 1, and so does a store that is not
    there yet when the command only reads (``existing``): the gateway creates it on its
    first start, a command that reads it should not."""
    return await open_url(s.store_url, s.store_timeout, args, create=create, existing=existing,
                          hot=s.redis_url, hot_prefix=s.redis_prefix)


async def open_url(url: str, timeout: float, args: argparse.Namespace, *, create: bool = False,
                   existing: bool = False, hot: str | None = None,
                   hot_prefix: str = "stepgate:") -> Store:
    """The store ``url`` names, opened and migrated, as ``open_configured`` says."""
    path = sqlite_path(url)
    if existing and path is not None and not path.exists() and \
            not marker_path(str(path)).exists():
        raise CommandError(f"no store at {path} yet: the gateway creates it when it first "
                           "starts")
    store = open_store(url, timeout, hot=hot, hot_prefix=hot_prefix)
    pending = pending_migrations(url)
    what = "" if pending is None else (
        f"creating the store {shown_store(url)}" if pending[0] == 0
        else f"migrating the store {shown_store(url)} from schema version {pending[0]} to "
             f"{pending[1]}")
    try:
        if what:
            with progress(args, what):
                await store.open(create=create)
        else:
            await store.open(create=create)
    except StoreMissing as exc:
        await store.close()
        raise CommandError(str(exc), USAGE) from None
    except (StoreUnavailable, OSError) as exc:
        await store.close()
        raise CommandError(str(exc)) from None
    return store


async def check_store(s: Settings, args: argparse.Namespace) -> None:
    """Open and close the store once, as ``run`` does before it serves."""
    store = await open_configured(s, args)
    await store.close()


def cmd_store(args: argparse.Namespace) -> int:
    if args.store_command == "migrate":
        return cmd_migrate(args)
    if args.store_command == "copy":
        return cmd_copy(args)
    s = settings(args.config)
    path = sqlite_path(s.store_url)
    if path is not None and path.exists():
        raise CommandError(f"the store {path} already exists; move it away first to start "
                           "with an empty store")

    async def init() -> None:
        store = await open_configured(s, args, create=True)
        await store.close()
    asyncio.run(init())
    print(f"created an empty store at {shown_store(s.store_url)}; tokens issued against any "
          "earlier store are refused")
    return 0


async def schema_version(store: Store, url: str) -> int | None:
    """The schema version the open store reports, when its backend says (an SQLite file is
    read directly; another backend may offer ``schema_version``, a value or a method)."""
    version = sqlite_version(url)
    if version is not None:
        return version
    found = getattr(store, "schema_version", None)
    if callable(found):
        found = found()
        if inspect.isawaitable(found):
            found = await found
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the schema migrations of the configured store now, rather than at the next
    start; exit 0 when the store is at the newest schema."""
    s = settings(args.config)
    name = shown_store(s.store_url)
    before = sqlite_version(s.store_url)

    async def migrate() -> int | None:
        store = await open_url(s.store_url, s.store_timeout, args)
        try:
            return await schema_version(store, s.store_url)
        finally:
            await store.close()
    after = asyncio.run(migrate())
    if before == 0:
        print(f"created the store {name} at schema version {after}")
    elif before is not None and after is not None and before != after:
        print(f"migrated the store {name} from schema version {before} to {after}")
    elif after is not None:
        print(f"the store {name} is at schema version {after}: nothing to migrate"
              if before is not None else f"the store {name} is at schema version {after}")
    else:
        print(f"the store {name} is migrated")
    return 0


@dataclass
class Copied:
    users: int = 0
    factors: int = 0
    recovery_codes: int = 0
    skipped: int = 0  # factors the destination already held (with --yes)


def _url(option: str, value: str) -> str:
    """A store URL from the command line; a relative SQLite path or password file is
    relative to the working directory."""
    try:
        url = store_url(value)
    except Invalid as exc:
        raise CommandError(f"{option}: {'; '.join(why for why, _ in exc.reasons)}",
                           USAGE) from None
    if url is None:
        raise CommandError(f"{option}: expected a store URL, found nothing", USAGE)
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).expanduser().resolve())
    from gateway.config.urls import with_files_resolved
    return with_files_resolved(url, lambda p: Path(p).expanduser().resolve())


async def copy_store(source: Store, destination: Store, args: argparse.Namespace,
                     now: float) -> Copied:
    """Every user's factors (as stored: sealed with the data keys, which do not change) and
    unused recovery-code hashes; factors the destination already holds are left alone."""
    users = await source.users()
    done = Copied()
    tell = progress_enabled(args)
    if tell:
        print(f"stepgate: copying {len(users)} user(s)...", file=sys.stderr, flush=True)
    for n, user in enumerate(users, start=1):
        have = {f.id for f in await destination.factors(user)}
        for record in await source.factors(user):
            if record.id in have:
                done.skipped += 1
                continue
            await destination.add_factor(record)
            done.factors += 1
        hashes = await source.recovery_code_hashes(user)
        if hashes:
            await destination.replace_recovery_codes(user, hashes, now)
            done.recovery_codes += len(hashes)
        done.users += 1
        if tell and (n % PROGRESS_EVERY == 0 or n == len(users)):
            print(f"stepgate: copied {n} of {len(users)} user(s)", file=sys.stderr, flush=True)
    return done


def cmd_copy(args: argparse.Namespace) -> int:
    """``stepgate store copy --from URL --to URL``: a deployment moved to another store.
    Refuses (exit 1) a destination that already has users unless ``--yes``."""
    source_url, destination_url = _url("--from", args.source), _url("--to", args.destination)
    if source_url == destination_url:
        raise CommandError("--to: expected another store than --from, found the same one",
                           USAGE)
    timeout = args.timeout

    async def copy() -> Copied:
        source = await open_url(source_url, timeout, args, existing=True)
        try:
            destination = await open_url(destination_url, timeout, args)
            try:
                present = await destination.users()
                if present and not args.yes:
                    raise CommandError(
                        f"the store {shown_store(destination_url)} already has "
                        f"{len(present)} user(s); nothing copied",
                        FAILURE, ["add --yes to copy into it anyway: factors it already "
                                  "holds are kept, recovery codes of the users copied are "
                                  "replaced"])
                return await copy_store(source, destination, args, time.time())
            finally:
                await destination.close()
        finally:
            await source.close()
    done = asyncio.run(copy())
    skipped = f" ({done.skipped} factor(s) already there were kept)" if done.skipped else ""
    print(f"copied {done.users} user(s), {done.factors} factor(s) and {done.recovery_codes} "
          f"recovery code(s) from {shown_store(source_url)} to "
          f"{shown_store(destination_url)}{skipped}; tokens issued against "
          f"{shown_store(source_url)} are refused by the new store: users prove a factor once "
          "more")
    return 0
