"""The audit events of known users in PostgreSQL: appended in batches, read back filtered."""

from __future__ import annotations

import json
from typing import Any

from .connection import Connection, guard


class Audit(Connection):
    """The AuditStore concern."""

    @guard
    async def append_audit(self, con: Any, events: list[dict[str, Any]]) -> None:
        if events:
            # One statement: the batch is kept whole, in order (ids follow the ordinality).
            await con.execute(
                "INSERT INTO audit (ts, user_name, event) SELECT ts, u, e FROM "
                "unnest($1::float8[], $2::text[], $3::text[]) WITH ORDINALITY AS b(ts, u, e, n) "
                "ORDER BY n",
                [float(e.get("ts") or 0.0) for e in events], [e.get("user") for e in events],
                [json.dumps(e) for e in events])

    @guard
    async def audit(self, con: Any, user: str | None, since: float | None, until: float | None,
                    limit: int) -> list[dict[str, Any]]:
        sql = "SELECT event FROM audit WHERE true"
        args: list[Any] = []
        for clause, value in ((" AND user_name = ${}", user), (" AND ts >= ${}", since),
                              (" AND ts <= ${}", until)):
            if value is not None:
                args.append(value)
                sql += clause.format(len(args))
        # The newest ``limit`` events, given back oldest first.
        args.append(limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"
        return [json.loads(r[0]) for r in await con.fetch(sql, *args)][::-1]
