"""Reloading the configuration and policies while serving (docs/operations.md): on SIGHUP
and when the configuration file or a policy file changes (watchfiles, debounced).

A reload validates the whole configuration as ``stepgate check`` does. A bad one keeps the
running configuration and logs every problem at once, in check's words; a good one builds
new parts (rules, identity, factors, throttling, endpoints) and swaps them in one
assignment: a request reads the parts once when it starts, so none sees half of the old
and half of the new rules, and requests in flight finish under the rules they started
with. The decision caches start empty with the new parts. Settings that need a restart
keep their running values and are named in the log when they changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config.load import check_settings
from gateway.config.settings import Settings
from gateway.metrics import METRICS

if TYPE_CHECKING:
    from gateway.http.app import Gateway, Parts

log = logging.getLogger("stepgate")

# Settings a running process cannot change, and the configuration keys they come from.
RESTART_ONLY = {
    "listen_host": "listen", "listen_port": "listen", "workers": "workers",
    "store_url": "store", "store_timeout": "store_timeout", "redis_url": "redis",
    "redis_prefix": "redis_prefix", "keys": "keys", "upstream": "upstream",
    "limits": "limits", "metrics": "metrics", "access_log": "access_log",
    "shutdown_grace": "shutdown_grace", "audit_path": "audit", "prefix": "prefix",
}
DEBOUNCE_MS = 300


class Reloader:
    def __init__(self, gw: Gateway, build: Callable[[Settings, Gateway], Parts]) -> None:
        self.gw = gw
        self.build = build  # Parts(settings, gateway)
        self._lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        self._signal = False
        # The files as they were when the settings were read (the gateway is built right
        # after): a change made before the watcher is live is seen by comparing.
        self._seen = self._stamps() if gw.serving else {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._hup)
            self._signal = True
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # not the main thread of a process: no signals here
        self._stop = asyncio.Event()
        self._watcher = loop.create_task(self._watch())

    async def stop(self) -> None:
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        if self._stop is not None:
            self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher  # stopping anyway: how the watcher ended does not matter
            self._watcher = None
        if self._pending:
            await asyncio.wait(self._pending, timeout=10)

    def _hup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _watched(self) -> tuple[list[Path], set[Path], Path | None]:
        """Folders to watch, files that matter, and a policy folder whose *.yaml matter."""
        s = self.gw.settings
        config = s.source.resolve()
        folders, files, policy_dir = [config.parent], {config}, None
        policies = s.policies_path.resolve() if s.policies_path is not None else None
        if policies is not None and policies.is_dir():
            folders.append(policies)
            policy_dir = policies
        elif policies is not None:
            folders.append(policies.parent)
            files.add(policies)
        return list(dict.fromkeys(folders)), files, policy_dir

    def _stamps(self) -> dict[Path, int]:
        """Modification times of the files a reload reads (to see a change made while the
        watcher was starting)."""
        folders, files, policy_dir = self._watched()
        paths = set(files)
        if policy_dir is not None:
            paths.update(p for p in policy_dir.iterdir() if p.suffix in (".yaml", ".yml"))
        out: dict[Path, int] = {}
        for p in paths:
            try:
                out[p] = p.stat().st_mtime_ns
            except OSError:
                out[p] = -1
        return out

    async def _watch(self) -> None:
        import watchfiles
        folders, files, policy_dir = self._watched()

        def relevant(change: watchfiles.Change, path: str) -> bool:
            p = Path(path)
            return p in files or (policy_dir is not None and p.parent == policy_dir and
                                  p.suffix in (".yaml", ".yml"))
        first = True
        try:
            # The first empty batch (after rust_timeout) says the watcher is live: a change
            # made before then was not seen by it, so the files are compared once.
            async for changes in watchfiles.awatch(
                    *folders, watch_filter=relevant, debounce=DEBOUNCE_MS, step=50,
                    recursive=False, stop_event=self._stop, yield_on_timeout=True,
                    rust_timeout=1000):
                if changes:
                    first = False
                    await self.reload("file change")
                elif first:
                    first = False
                    if self._stamps() != self._seen:
                        await self.reload("file change")
        except FileNotFoundError:
            log.error("reload: cannot watch %s; SIGHUP still reloads",
                      ", ".join(map(str, folders)))

    async def reload(self, why: str) -> bool:
        """Validate and swap; False (and every problem logged) when the configuration has
        problems: the running one stays."""
        async with self._lock:
            old = self.gw.settings
            checked = await asyncio.to_thread(check_settings, old.source)
            problems = list(checked.errors)
            new = checked.settings
            parts = None
            if new is not None and not problems:
                kept = dataclasses.replace(new, **{a: getattr(old, a) for a in RESTART_ONLY})
                try:
                    parts = self.build(kept, self.gw)
                except Exception as exc:  # noqa: BLE001 - reported, the old parts stay
                    problems.append(f"{checked.where}: {exc}")
            if parts is None or new is None:
                lines = "".join(f"\n  - {p}" for p in problems)
                log.error("reload (%s) refused, the running configuration stays: %d "
                          "problem(s) in the configuration:%s", why, len(problems), lines)
                METRICS.reload(False)
                return False
            changed = sorted({key for attr, key in RESTART_ONLY.items()
                              if getattr(new, attr) != getattr(old, attr)})
            if changed:
                log.warning("reload (%s): %s changed and take(s) effect at the next restart",
                            why, ", ".join(changed))
            self.gw.parts = parts
            log.info("reload (%s): %d rule(s) from %s", why, len(new.rules.rules),
                        ", ".join(new.rules.sources) or "no policy file")
            METRICS.reload(True)
            return True
