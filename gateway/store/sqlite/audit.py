"""The audit events of known users in SQLite: appended in batches, read back filtered."""

from __future__ import annotations

import json
from typing import Any

from .connection import Connection, guard


class Audit(Connection):
    """The AuditStore concern."""

    @guard
    def append_audit(self, events: list[dict[str, Any]]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO audit (ts, user, event) VALUES (?, ?, ?)",
                          [(e.get("ts", 0.0), e.get("user"), json.dumps(e)) for e in events])

    @guard
    def audit(self, user: str | None, since: float | None, until: float | None,
              limit: int) -> list[dict[str, Any]]:
        sql = "SELECT event FROM audit WHERE 1=1"
        args: list[Any] = []
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if until is not None:
            sql += " AND ts <= ?"
            args.append(until)
        # The newest ``limit`` events, given back oldest first.
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [json.loads(r[0]) for r in self.conn.execute(sql, args).fetchall()][::-1]
