"""Storage backends behind one contract."""

from collections.abc import Callable

from .base import (
    AuditStore,
    ChallengeRecord,
    ChallengeStore,
    CounterStore,
    FactorRecord,
    FactorStatus,
    FactorStore,
    Lifecycle,
    ReserveResult,
    Store,
    StoreMissing,
    StoreUnavailable,
    TokenUseStore,
    UserLock,
)


def _sqlite(url: str, timeout: float) -> Store:
    from .sqlite import SQLiteStore
    return SQLiteStore(url[len("sqlite:///"):], timeout)


def _postgresql(url: str, timeout: float) -> Store:
    from .postgresql import PostgresStore
    return PostgresStore(url, timeout)


# Backends by URL scheme (config/registry.py STORE_SCHEMES names the same ones).
SCHEMES: dict[str, Callable[[str, float], Store]] = {"sqlite": _sqlite,
                                                     "postgresql": _postgresql}


def open_store(url: str, timeout: float = 2.0, hot: str | None = None,
               hot_prefix: str = "stepgate:") -> Store:
    """The backend ``url`` names; every call is bounded by ``timeout`` seconds. With ``hot``
    (a ``redis://`` or ``rediss://`` URL) token uses, counters and lockouts live in Redis
    under keys starting with ``hot_prefix``, and the rest in the SQL store."""
    scheme = url.partition(":")[0]
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported store URL scheme {scheme!r}")
    durable = SCHEMES[scheme](url, timeout)
    if hot is None:
        return durable
    from .composite import Combined
    from .redis import RedisHotStore
    return Combined(durable, RedisHotStore(hot, timeout, prefix=hot_prefix))


__all__ = ["AuditStore", "ChallengeRecord", "ChallengeStore", "CounterStore", "FactorRecord",
           "FactorStatus", "FactorStore", "Lifecycle", "ReserveResult", "Store", "StoreMissing",
           "StoreUnavailable", "TokenUseStore", "UserLock", "open_store"]
