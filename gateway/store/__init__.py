"""Storage backends behind one contract."""

from .base import (
    ChallengeRecord,
    FactorRecord,
    FactorStatus,
    ReserveResult,
    Store,
    StoreMissing,
    StoreUnavailable,
    UserLock,
)


def open_store(url: str, timeout: float = 2.0) -> Store:
    """The backend named by ``url`` (only ``sqlite:///PATH`` for now); every call is bounded
    by ``timeout`` seconds."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):], timeout)
    raise ValueError(f"unsupported store URL scheme in {url.split(':', 1)[0]!r}")


__all__ = ["ChallengeRecord", "FactorRecord", "FactorStatus", "ReserveResult", "Store",
           "StoreMissing", "StoreUnavailable", "UserLock", "open_store"]
