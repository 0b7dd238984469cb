"""Structured audit events: one JSON line per decision, never a code, token or secret.

Lines are buffered and flushed at least once a second and at shutdown, so the
forwarding hot path pays for a string format, not a system call. Events about
factors, challenges, lockouts and refusals of a known user are also written to the
store, in batches off the request's path, where the admin API reads them; routine
forwards stay in the stream only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from gateway.primitives import REQUEST_ID
from gateway.store import Store, StoreUnavailable

_STREAM_ONLY = frozenset({"allowed", "token_used"})
FLUSH_EVERY = 1.0


class Lines:
    """Lines for a file (appended to) or a stream, written at most once per FLUSH_EVERY
    and when closed: the audit stream and the access log (http/access.py)."""

    def __init__(self, path: str, stream: IO[str] | None = None) -> None:
        self.own = False
        if stream is not None:
            self.out = stream
        elif path == "-":
            self.out = sys.stdout
        else:
            self.out = open(path, "a", encoding="utf-8")  # noqa: SIM115
            self.own = True
        self.pending: list[str] = []
        self.timer: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        self.pending.append(line)
        if self.timer is None:
            self.arm()

    def arm(self) -> None:
        if self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self.timer = loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        self.timer = None
        if self.pending:
            self.out.write("".join(self.pending))
            self.pending.clear()
            self.out.flush()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.flush()
        if self.own:
            self.out.close()


class Audit:
    def __init__(self, path: str, store: Store | None, clock: Callable[[], float] = time.time,
                 stream: IO[str] | None = None) -> None:
        self.clock = clock
        self.store = store
        self.lines = Lines(path, stream)
        self.out = self.lines.out
        self._ms = -1
        self._stamp = ""
        self._kept: list[dict[str, Any]] = []
        self._keeper: asyncio.Task[None] | None = None

    def _write(self, line: str) -> None:
        self.lines.write(line)

    def flush(self) -> None:
        self.lines.flush()

    def forwarded(self, event: str, rule: str | None, method: str, path: str,
                  user: str | None = None, binding: str | None = None) -> None:
        """The hot-path events."""
        self.stamped(self.tail(event, rule, method, path, user, binding))

    @staticmethod
    def tail(event: str, rule: str | None, method: str, path: str,
             user: str | None = None, binding: str | None = None) -> str:
        """Everything of a hot-path line but its time, to be cached with a decision."""
        return Audit.head(event, rule, user) + Audit.rest(method, path, binding)

    @staticmethod
    def head(event: str, rule: str | None, user: str | None = None) -> str:
        """The event, user and rule of a hot-path line. Rule names never need JSON escaping
        (validated names); user names may."""
        line = f',"event":"{event}"'
        if user is not None:
            quoted = f'"{user}"' if '"' not in user and "\\" not in user else json.dumps(user)
            line += f',"user":{quoted}'
        if rule is not None:
            line += f',"rule":"{rule}"'
        return line

    @staticmethod
    def rest(method: str, path: str, binding: str | None = None) -> str:
        """The request of a hot-path line, and its end. Methods and canonical paths never
        need JSON escaping (RFC 9110 tokens, canonical pchars)."""
        if binding is None:
            return f',"method":"{method}","path":"{path}"}}\n'
        return f',"method":"{method}","path":"{path}","binding":"{binding}"}}\n'

    def stamped(self, tail: str) -> None:
        # Formatting a float costs more than the rest of the line: the stamp is made once
        # per millisecond and reused within it.
        ms = int(self.clock() * 1000)
        if ms != self._ms:
            self._ms = ms
            self._stamp = f'{{"ts":{ms // 1000}.{ms % 1000:03d}'
        rid = REQUEST_ID.get()
        # Request ids are generated or checked against REQUEST_ID_SHAPE: no escaping.
        lines = self.lines
        lines.pending.append(self._stamp + tail if rid is None else
                             f'{self._stamp},"request_id":"{rid}"{tail}')
        if lines.timer is None:
            lines.arm()

    async def emit(self, event: str, **fields: Any) -> None:
        doc = {"ts": round(self.clock(), 3), "event": event}
        rid = REQUEST_ID.get()
        if rid is not None:
            doc["request_id"] = rid
        doc.update((k, v) for k, v in fields.items() if v is not None)
        self._write(json.dumps(doc, separators=(",", ":")) + "\n")
        if self.store is not None and event not in _STREAM_ONLY and fields.get("user"):
            self._kept.append(doc)
            if self._keeper is None:
                self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        """Write queued events to the store in batches, off the request's path: one
        store call for every event that arrived while the previous call ran."""
        assert self.store is not None
        try:
            while self._kept:
                batch, self._kept = self._kept, []
                try:
                    await self.store.append_audit(batch)
                except StoreUnavailable:
                    pass  # the stream line is the record of last resort
        finally:
            self._keeper = None

    async def drain(self) -> None:
        """Wait until queued events reached the store (at shutdown)."""
        if self._keeper is not None:
            await self._keeper

    def close(self) -> None:
        self.lines.close()
