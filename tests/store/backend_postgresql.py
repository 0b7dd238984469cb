"""The PostgreSQL backend for the contract suite: each state directory is a database of
its own on the shared test server, created the first time a handle is made for it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from gateway.store import Store, open_store
from tests.servers import postgres

_databases: dict[str, str] = {}


def database_url(state: Path) -> str:
    """The URL of the database kept for ``state``; every handle on it shares it."""
    key = str(state)
    url = _databases.get(key)
    if url is None:
        name = "sg_" + hashlib.sha256(key.encode()).hexdigest()[:24]
        url = _databases[key] = postgres().new_database(name)
    return url


def _postgresql(state: Path) -> Store:
    # A generous timeout, as for SQLite: a race queues dozens of calls on one row, and a
    # call that gave up would fail the race for the wrong reason.
    return open_store(database_url(state), timeout=10.0)


BACKENDS: dict[str, Callable[[Path], Store]] = {"postgresql": _postgresql}
