"""The shared store: PostgreSQL through a pool of asyncpg connections, one mixin per
concern of the contract.

The URL is a libpq-style URL, ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``, whose
query parameters go to asyncpg (``sslmode=verify-full``, ``sslrootcert=PATH``, ...; any
other name is a server setting, e.g. ``search_path=stepgate`` to keep the tables in a
schema of their own), except the store's own:

``pool_min=N``, ``pool_max=N``
    connections kept open and opened at most by each gateway process (default 1 and 10).
``password_env=VAR``
    the password is in the environment variable VAR.
``password_file=PATH``
    the password is the content of the file PATH (without its final newline), read again
    for every new connection, so a rotated secret is picked up without a restart.

Without any of them the password comes from the URL, else from ``PGPASSWORD`` or the
``.pgpass`` file as for libpq. Every call is bounded by the store's timeout and fails
with StoreUnavailable; the pool reconnects by itself once the server answers again.
Migrations run when the store opens, under an advisory lock, so replicas starting together
migrate once.
"""

from __future__ import annotations

from .audit import Audit
from .challenges import Challenges
from .connection import MIGRATIONS, OWN_PARAMETERS, TABLES, Connection, parse_url
from .factors import Factors
from .hot import SWEEP_EVERY, Counters, TokenUses


class PostgresStore(Factors, Challenges, TokenUses, Counters, Audit, Connection):
    """Every concern of the store in one PostgreSQL database."""


__all__ = ["MIGRATIONS", "OWN_PARAMETERS", "SWEEP_EVERY", "TABLES", "Audit", "Challenges",
           "Connection", "Counters", "Factors", "PostgresStore", "TokenUses", "parse_url"]
