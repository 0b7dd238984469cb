"""The access log (``access_log.path``, off by default): one JSON line per request —
time, request id, method, canonical path, rule, decision, status, duration and upstream
latency. Never the query, a header, a token or a credential (docs/operations.md).

Lines are buffered and written once a second, like the audit stream's hot-path lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from gateway.audit import Lines
from gateway.http.wire import Scope, Send
from gateway.primitives import REQUEST_ID

# What the request path notes in the scope for its line: (decision kind, rule, canonical
# path) from decide(), or ("ask", ingress) for a forward-auth ask; the upstream's latency.
NOTE = "stepgate.note"
UPSTREAM_MS = "stepgate.upstream_ms"
_STATUS = "stepgate.status"
_START = "stepgate.start"


class AccessLog:
    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        self.lines = Lines(path)
        self.clock = clock

    @classmethod
    def open(cls, path: str | None, clock: Callable[[], float]) -> AccessLog | None:
        return None if path is None else cls(path, clock)

    def wrap(self, scope: Scope, send: Send) -> Send:
        """``send`` that notes the status the request is answered with."""
        scope[_START] = time.monotonic()

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                scope[_STATUS] = message["status"]
            await send(message)
        return noting

    def done(self, scope: Scope) -> None:
        note = scope.get(NOTE) or (None, None, None)
        kind, rule = note[0], note[1]
        path = note[2].raw if len(note) > 2 and note[2] is not None else None
        doc: dict[str, Any] = {
            "ts": round(self.clock(), 3), "request_id": REQUEST_ID.get(),
            "method": scope.get("method"), "path": path, "rule": rule if kind != "ask" else None,
            "decision": kind, "status": scope.get(_STATUS, 0),
            "duration_ms": round((time.monotonic() - scope[_START]) * 1000, 3)}
        if kind == "ask":
            doc["ingress"] = rule
        if UPSTREAM_MS in scope:
            doc["upstream_ms"] = scope[UPSTREAM_MS]
        self.lines.write(json.dumps(doc, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.lines.flush()

    def close(self) -> None:
        self.lines.close()
