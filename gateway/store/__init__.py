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


# Backends by URL scheme (config/registry.py STORE_SCHEMES names the same ones).
SCHEMES: dict[str, Callable[[str, float], Store]] = {"sqlite": _sqlite}


def open_store(url: str, timeout: float = 2.0) -> Store:
    """The backend ``url`` names; every call is bounded by ``timeout`` seconds."""
    scheme = url.partition(":")[0]
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported store URL scheme {scheme!r}")
    return SCHEMES[scheme](url, timeout)


__all__ = ["AuditStore", "ChallengeRecord", "ChallengeStore", "CounterStore", "FactorRecord",
           "FactorStatus", "FactorStore", "Lifecycle", "ReserveResult", "Store", "StoreMissing",
           "StoreUnavailable", "TokenUseStore", "UserLock", "open_store"]
