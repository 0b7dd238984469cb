"""``stepgate store init``: an empty store where a lost one was (docs/operations.md, A lost
store), and opening the store the way ``run`` does before it serves, with a progress line
while schema migrations run."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from gateway.cli.common import USAGE, CommandError, progress, settings
from gateway.config.settings import Settings
from gateway.store import Store, StoreMissing, StoreUnavailable, open_store
from gateway.store.sqlite import marker_path


def pending_migrations(url: str) -> tuple[int, int] | None:
    """(from, to) schema versions when opening the store will migrate it, else None."""
    from gateway.store.sqlite import MIGRATIONS
    if not url.startswith("sqlite:///") or url.endswith("/:memory:"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    version = 0
    if path.is_file():
        try:
            with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
                row = db.execute("SELECT version FROM schema_version").fetchone()
                version = int(row[0]) if row else 0
        except sqlite3.Error:
            version = 0  # no schema yet (or unreadable: opening the store will say so)
    return (version, len(MIGRATIONS)) if version < len(MIGRATIONS) else None


def sqlite_path(url: str) -> Path | None:
    path = url.removeprefix("sqlite:///")
    return None if path == url or path == ":memory:" else Path(path)


async def open_configured(s: Settings, args: argparse.Namespace, create: bool = False,
                          existing: bool = False) -> Store:
    """The configured store, opened (and migrated) as ``run`` opens it. A lost store exits
    2 (what ``stepgate check`` reports too), a store that does not answer exits 1, and so
    does a store that is not there yet when the command only reads (``existing``): the
    gateway creates it on its first start, a command that reads it should not."""
    path = sqlite_path(s.store_url)
    if existing and path is not None and not path.exists() and \
            not marker_path(str(path)).exists():
        raise CommandError(f"no store at {path} yet: the gateway creates it when it first "
                           "starts")
    store = open_store(s.store_url, s.store_timeout)
    pending = pending_migrations(s.store_url)
    what = "" if pending is None else (
        f"creating the store {s.store_url.removeprefix('sqlite:///')}" if pending[0] == 0
        else f"migrating the store {s.store_url.removeprefix('sqlite:///')} from schema "
             f"version {pending[0]} to {pending[1]}")
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
    s = settings(args.config)
    path = s.store_url.removeprefix("sqlite:///")
    if Path(path).exists():
        raise CommandError(f"the store {path} already exists; move it away first to start "
                           "with an empty store")

    async def init() -> None:
        store = await open_configured(s, args, create=True)
        await store.close()
    asyncio.run(init())
    print(f"created an empty store at {path}; tokens issued against any earlier store are "
          "refused")
    return 0
