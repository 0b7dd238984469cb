"""The embedded store: one SQLite file in WAL mode, one mixin per concern of the contract.

Each concern's module (factors, challenges, hot, audit) builds on ``Connection``, which
owns the file, its thread, the call timeout and the migrations; ``SQLiteStore`` is all of
them on one connection, so calls of different concerns share its thread and transactions.
"""

from __future__ import annotations

from .audit import Audit
from .challenges import Challenges
from .connection import MIGRATIONS, Connection, marker_path
from .factors import Factors
from .hot import SWEEP_EVERY, Counters, TokenUses


class SQLiteStore(Factors, Challenges, TokenUses, Counters, Audit, Connection):
    """Every concern of the store on one SQLite file."""


__all__ = ["MIGRATIONS", "SWEEP_EVERY", "Audit", "Challenges", "Connection", "Counters",
           "Factors", "SQLiteStore", "TokenUses", "marker_path"]
