"""The contract's "postgresql+redis" backend: the durable state in PostgreSQL, the hot state
in Redis, both real servers (tests/servers.py). A directory maps to one database and one
key prefix, so two handles made for one directory share their state the way two gateway
processes do."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gateway.store import Store, open_store
from gateway.store.composite import Combined
from gateway.store.redis import RedisHotStore
from tests.servers import postgres, redis

TIMEOUT = 10.0  # the races queue dozens of calls: a call that gave up would fail for the wrong reason
_databases: dict[Path, str] = {}


def name_of(state: Path) -> str:
    return "t" + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:20]


def durable(state: Path) -> Store:
    url = _databases.get(state)
    if url is None:
        url = _databases[state] = postgres().new_database(name_of(state))
    return open_store(url, timeout=TIMEOUT)


def hot(state: Path, timeout: float = TIMEOUT) -> RedisHotStore:
    return RedisHotStore(redis().url(0), timeout, prefix=f"{name_of(state)}:")


def combined(state: Path) -> Store:
    return Combined(durable(state), hot(state))


BACKENDS = {"postgresql+redis": combined}
