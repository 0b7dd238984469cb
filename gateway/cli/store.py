"""``stepgate store init``: an empty store where a lost one was (docs/operations.md, A lost
store), and opening the store the way ``run`` does before it serves."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.cli.common import settings
from gateway.config.settings import Settings


async def store_problem(s: Settings, create: bool = False) -> str | None:
    """Why the configured store cannot be opened, or None when it can."""
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
    s = settings(args.config)
    path = s.store_url.removeprefix("sqlite:///")
    if Path(path).exists():
        print(f"stepgate: the store {path} already exists; move it away first to start with "
              "an empty store", file=sys.stderr)
        return 1
    problem = asyncio.run(store_problem(s, create=True))
    if problem is not None:
        print(f"stepgate: {problem}", file=sys.stderr)
        return 1
    print(f"created an empty store at {path}; tokens issued against any earlier store are "
          "refused")
    return 0
