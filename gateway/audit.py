"""Structured audit events: one JSON line per decision, never a code, token or secret."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .store import Store, StoreUnavailable

# Events that only record routine forwarding stay out of the store's audit table.
_STREAM_ONLY = frozenset({"allowed"})


class Audit:
    def __init__(self, path: str, store: Store | None, clock: Callable[[], float] = time.time,
                 stream: IO[str] | None = None) -> None:
        self.clock = clock
        self.store = store
        if stream is not None:
            self.out = stream
        elif path == "-":
            self.out = sys.stdout
        else:
            self.out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    async def emit(self, event: str, **fields: Any) -> None:
        doc = {"ts": round(self.clock(), 3), "event": event}
        doc.update((k, v) for k, v in fields.items() if v is not None)
        self.out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        self.out.flush()
        if self.store is not None and event not in _STREAM_ONLY:
            try:
                await self.store.append_audit(doc)
            except StoreUnavailable:
                pass  # the stream line above is the record of last resort

    def close(self) -> None:
        if self.out not in (sys.stdout, sys.stderr):
            self.out.close()
