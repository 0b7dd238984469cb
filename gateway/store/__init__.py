"""Storage backends behind one contract."""

from .base import ChallengeRecord, FactorRecord, ReserveResult, Store, StoreUnavailable, UserLock


def open_store(url: str) -> Store:
    """The backend named by ``url`` (only ``sqlite:///PATH`` for now)."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):])
    raise ValueError(f"unsupported store URL scheme in {url.split(':', 1)[0]!r}")


__all__ = ["ChallengeRecord", "FactorRecord", "ReserveResult", "Store", "StoreUnavailable",
           "UserLock", "open_store"]
