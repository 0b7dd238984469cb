"""Prometheus metrics (docs/operations.md): one module-level ``METRICS`` every layer
records into; it does nothing until ``configure`` turns it on (``metrics.listen`` set), so
an unconfigured gateway pays one attribute lookup and call per event.

How it is counted. Every server process (the one ``stepgate run`` serves in, or each of its
``workers``) writes its own files in one directory with prometheus-client's multiprocess
mode; ``serve`` prepares that directory (PROMETHEUS_MULTIPROC_DIR, inherited by the
workers) and answers ``GET /metrics`` on ``metrics.listen`` from a thread of the process
that starts the workers, summing every process's files. On the request path an event is
added to a counter kept in the process (a list cell, about a tenth of the cost of a
prometheus-client ``inc`` on a shared file, which takes a lock, a system call and a write);
a thread of each process moves what was added to the files every ``FLUSH_INTERVAL``
seconds, so a scrape sees an event at most that late.

Label values are few and fixed, or names from the configuration (rules, factors,
channels), never a user name, code, token or address.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("stepgate")

ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 1.0  # seconds an event may wait before a scrape sees it
DEFAULT_RULE = "(default)"  # the rule label when no rule matched: default_action decided
NO_RULE = "(none)"  # the rule label when the request never reached a rule

# stepgate_requests_total{decision}: what the decision was.
DECISIONS = (
    "allowed",      # an allow rule (or default_action: allow): forwarded
    "token",        # a second-factor token fitted the rule: forwarded with its evidence
    "unenrolled",   # unenrolled: allow, for a user with no factor: forwarded
    "denied",       # 403: a deny rule, default_action: deny, a user with no factor, body unseen
    "challenged",   # 401 second-factor-required without a token (or without an identity)
    "rejected",     # 401 second-factor-required: the token sent was refused (expired,
                    # revoked, another request's, already used)
    "refused",      # any other problem before or while deciding (400, 409, 413, 415, 503)
    "own",          # the gateway's own endpoints under the prefix
)
VERIFICATIONS = ("ok", "wrong", "reused", "gone", "locked")
RESERVATIONS = ("ok", "busy", "used")
SETTLEMENTS = ("committed", "released", "failed")
LOCKOUTS = ("timed", "hard")
THROTTLES = ("locked", "challenges", "sends", "enrolment_sends")
UPSTREAM_ERRORS = ("connect", "timeout", "other", "busy", "interrupted")
STORE_ERRORS = ("timeout", "error")
RELOADS = ("ok", "failed")

INF = float("inf")
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, INF)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, INF)

# The methods ``configure`` replaces by the live ones.
EVENTS = ("clock", "decision", "challenge", "verification", "lockout", "throttled",
          "delivery", "reservation", "settlement", "upstream", "upstream_error", "store",
          "store_error", "reload", "flush")


class Metrics:
    """The events the gateway counts. Off: every method returns at once. On: ``configure``
    puts the live recorder's methods on the instance, so a call costs no extra hop."""

    enabled = False
    directory: str | None = None

    def configure(self, settings: Any) -> None:
        """Turn the metrics on in this process (a server process, or a worker) when
        ``metrics.listen`` is set. The directory is the one ``serve`` prepared; a process
        that finds none (no ``serve`` before it) prepares it and listens itself."""
        listen = settings.metrics.listen
        if listen is None or self.enabled:
            return
        path = os.environ.get(ENV)
        if not path:
            try:
                path = _start(listen, 1)
            except OSError as exc:
                log.error("metrics are off: cannot listen on %s:%d: %s", *listen,
                          exc.strerror or exc)
                return
        live = _Live(path)
        for name in EVENTS:
            setattr(self, name, getattr(live, name))
        self._live = live
        self.directory = path
        self.enabled = True

    def close(self) -> None:
        """Off again (tests, a process ending): what was counted is written out first."""
        live = self.__dict__.pop("_live", None)
        for name in (*EVENTS, "enabled", "directory"):
            self.__dict__.pop(name, None)
        if live is not None:
            live.close()

    @staticmethod
    def clock() -> float:
        """A start time for ``upstream`` and ``store`` (0.0 while off: nothing is timed)."""
        return 0.0

    def flush(self) -> None:
        """Write what this process counted to its files now (it happens every
        FLUSH_INTERVAL seconds and when the process exits)."""

    def decision(self, kind: str, rule: str | None) -> None:
        """One request decided: ``kind`` from DECISIONS; ``rule`` the rule's name, None
        when default_action decided, NO_RULE when no rule was reached."""

    def challenge(self, factor: str) -> None:
        """A challenge was created for ``factor``."""

    def verification(self, factor: str, outcome: str) -> None:
        """An answer to a challenge of ``factor``: ``outcome`` from VERIFICATIONS."""

    def lockout(self, hard: bool) -> None:
        """A user was locked (``hard``: until an administrator unlocks)."""

    def throttled(self, limit: str) -> None:
        """A step refused by a limit from THROTTLES (429)."""

    def delivery(self, channel: str, ok: bool) -> None:
        """A message handed to ``channel`` (a code or a notification), taken or not."""

    def reservation(self, outcome: str) -> None:
        """A counted token's use reserved: ``outcome`` from RESERVATIONS."""

    def settlement(self, result: str) -> None:
        """A reserved use settled: ``result`` from SETTLEMENTS."""

    def upstream(self, started: float) -> None:
        """The upstream's response headers arrived; ``started`` came from ``clock()``."""

    def upstream_error(self, kind: str) -> None:
        """Forwarding failed: ``kind`` from UPSTREAM_ERRORS."""

    def store(self, backend: str, op: str, started: float) -> None:
        """A store operation ended (well or not); ``started`` came from ``clock()``."""

    def store_error(self, backend: str, op: str, kind: str) -> None:
        """A store operation failed: ``kind`` from STORE_ERRORS."""

    def reload(self, ok: bool) -> None:
        """A configuration reload finished, well or badly."""


METRICS = Metrics()


class _Cell:
    """A histogram's observations in this process: per bucket (not cumulative) and their
    sum, and how much of each was written to the files already."""

    __slots__ = ("counts", "sum", "written", "written_sum", "child")

    def __init__(self, child: Any, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0
        self.written = [0] * size
        self.written_sum = 0.0
        self.child = child


class _Live:
    """The metrics of one process, on. Events come from the event loop's thread; the
    flush thread only reads what they add (a cell has one writer each way), under a lock
    shared with the creation of cells."""

    def __init__(self, path: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        # prometheus-client picks its value class when it is first imported: made
        # multiprocess here, on this directory, whatever was imported before.
        self._previous = values.ValueClass
        self._values = values.MultiProcessValue()
        values.ValueClass = self._values
        self.path = path

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Counter(name, doc, labels, registry=None)
        self.requests = counter("stepgate_requests", "Requests by decision and rule",
                                ("decision", "rule"))
        self.challenges = counter("stepgate_challenges", "Challenges created, by factor",
                                  ("factor",))
        self.verifications = counter("stepgate_verifications",
                                     "Answers to challenges, by factor and outcome",
                                     ("factor", "outcome"))
        self.lockouts = counter("stepgate_lockouts", "Users locked after wrong codes", ("kind",))
        self.throttles = counter("stepgate_throttled", "Steps refused by a limit (429)",
                                 ("limit",))
        self.deliveries = counter("stepgate_deliveries",
                                  "Messages handed to a channel, by channel and outcome",
                                  ("channel", "outcome"))
        self.reservations = counter("stepgate_token_reservations",
                                    "Counted token uses reserved, by outcome", ("outcome",))
        self.settlements = counter("stepgate_token_settlements",
                                   "Reserved token uses settled, by result", ("result",))
        self.upstream_errors = counter("stepgate_upstream_errors",
                                       "Requests the upstream did not answer, by kind", ("kind",))
        self.store_errors = counter("stepgate_store_errors", "Failed store operations",
                                    ("backend", "op", "kind"))
        self.reloads = counter("stepgate_config_reloads", "Configuration reloads, by outcome",
                               ("outcome",))
        self.last_reload = Gauge("stepgate_config_last_reload_success",
                                 "1 when the last configuration reload of every server "
                                 "process succeeded (or none happened yet), else 0",
                                 registry=None, multiprocess_mode="livemin")
        self.upstream_latency = Histogram(
            "stepgate_upstream_latency_seconds", "Time from sending a request upstream to "
            "its response headers", registry=None, buckets=UPSTREAM_BUCKETS)
        self.store_latency = Histogram(
            "stepgate_store_latency_seconds", "Store operations' duration, by backend and "
            "operation", ("backend", "op"), registry=None, buckets=STORE_BUCKETS)

        self._lock = threading.Lock()
        self._cells: list[list[Any]] = []  # [added, written, child]
        self._observed: list[_Cell] = []
        # label values -> cell; one dict per family, looked up without building labels
        self._decisions: dict[tuple[str, str | None], list[Any]] = {}
        self._challenges: dict[str, list[Any]] = {}
        self._verifications: dict[tuple[str, str], list[Any]] = {}
        self._deliveries: dict[tuple[str, bool], list[Any]] = {}
        self._store_errors: dict[tuple[str, str, str], list[Any]] = {}
        self._store: dict[tuple[str, str], _Cell] = {}
        # Fixed label sets exist from the start, at 0: rates and alerts need no first event.
        self._lockouts = {k: self._cell(self.lockouts, (k,)) for k in LOCKOUTS}
        self._throttles = {k: self._cell(self.throttles, (k,)) for k in THROTTLES}
        self._reservations = {k: self._cell(self.reservations, (k,)) for k in RESERVATIONS}
        self._settlements = {k: self._cell(self.settlements, (k,)) for k in SETTLEMENTS}
        self._upstream_errors = {k: self._cell(self.upstream_errors, (k,))
                                 for k in UPSTREAM_ERRORS}
        for outcome in RELOADS:
            self.reloads.labels(outcome)
        self._upstream = self._observer(self.upstream_latency, (), len(UPSTREAM_BUCKETS))
        self.last_reload.set(1)

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepgate-metrics", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    # ------------------------------------------------------------------ cells

    def _cell(self, family: Any, labels: tuple[str, ...]) -> list[Any]:
        cell = [0, 0, family.labels(*labels)]
        with self._lock:
            self._cells.append(cell)
        return cell

    def _observer(self, family: Any, labels: tuple[str, ...], size: int) -> _Cell:
        cell = _Cell(family.labels(*labels) if labels else family, size)
        with self._lock:
            self._observed.append(cell)
        return cell

    def _add(self, cells: dict[Any, list[Any]], key: Any, family: Any,
             labels: tuple[str, ...]) -> None:
        """The first event of a label set: its cell, counting this event."""
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = self._cell(family, labels)
        cell[0] += 1

    # ------------------------------------------------------------------ events

    clock = staticmethod(time.perf_counter)

    def decision(self, kind: str, rule: str | None) -> None:
        try:
            self._decisions[kind, rule][0] += 1
        except KeyError:
            self._add(self._decisions, (kind, rule), self.requests,
                      (kind, DEFAULT_RULE if rule is None else rule))

    def challenge(self, factor: str) -> None:
        self._add(self._challenges, factor, self.challenges, (factor,))

    def verification(self, factor: str, outcome: str) -> None:
        self._add(self._verifications, (factor, outcome), self.verifications, (factor, outcome))

    def lockout(self, hard: bool) -> None:
        self._lockouts["hard" if hard else "timed"][0] += 1

    def throttled(self, limit: str) -> None:
        self._add(self._throttles, limit, self.throttles, (limit,))

    def delivery(self, channel: str, ok: bool) -> None:
        self._add(self._deliveries, (channel, ok), self.deliveries,
                  (channel, "ok" if ok else "failed"))

    def reservation(self, outcome: str) -> None:
        self._add(self._reservations, outcome, self.reservations, (outcome,))

    def settlement(self, result: str) -> None:
        self._add(self._settlements, result, self.settlements, (result,))

    def upstream(self, started: float) -> None:
        seconds = time.perf_counter() - started
        cell = self._upstream
        cell.counts[bisect_left(UPSTREAM_BUCKETS, seconds)] += 1
        cell.sum += seconds

    def upstream_error(self, kind: str) -> None:
        self._add(self._upstream_errors, kind, self.upstream_errors, (kind,))

    def store(self, backend: str, op: str, started: float) -> None:
        seconds = time.perf_counter() - started
        cell = self._store.get((backend, op))
        if cell is None:
            cell = self._store[backend, op] = self._observer(
                self.store_latency, (backend, op), len(STORE_BUCKETS))
        cell.counts[bisect_left(STORE_BUCKETS, seconds)] += 1
        cell.sum += seconds

    def store_error(self, backend: str, op: str, kind: str) -> None:
        self._add(self._store_errors, (backend, op, kind), self.store_errors,
                  (backend, op, kind))

    def reload(self, ok: bool) -> None:
        # Rare, and perhaps from another thread: written at once.
        self.reloads.labels("ok" if ok else "failed").inc()
        self.last_reload.set(1 if ok else 0)

    # ------------------------------------------------------------------ writing out

    def flush(self) -> None:
        with self._lock:
            for cell in self._cells:
                added = cell[0]
                if added != cell[1]:
                    cell[2].inc(added - cell[1])
                    cell[1] = added
            for h in self._observed:
                _write_observations(h)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a full disk must not end the counting
                log.exception("metrics: could not write the counters")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        atexit.unregister(self.flush)
        self.flush()
        from prometheus_client import values
        self._values.close_all_files()
        if values.ValueClass is self._values:
            values.ValueClass = self._previous


def _write_observations(h: _Cell) -> None:
    """Add a histogram's new observations to its files. prometheus-client has no public
    call that adds several observations at once: its child keeps one value per bucket
    (``_buckets``, not cumulative) and the sum (``_sum``), each with ``inc``."""
    counts, written = h.counts, h.written
    for i, n in enumerate(counts):
        if n != written[i]:
            h.child._buckets[i].inc(n - written[i])
            written[i] = n
    total = h.sum
    if total != h.written_sum:
        h.child._sum.inc(total - h.written_sum)
        h.written_sum = total


# ---------------------------------------------------------------------- the listener


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Collector:
    """Every process's files, summed; the gauges of processes that ended are dropped
    first (a worker that died and was replaced no longer holds its last value)."""

    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector
        self.path = path
        self.files = MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import mark_process_dead
        for name in os.listdir(self.path):
            if name.startswith("gauge_live") and name.endswith(".db"):
                pid = name[:-3].rpartition("_")[2]
                if pid.isdigit() and not _alive(int(pid)):
                    mark_process_dead(int(pid), self.path)
        return self.files.collect()


def registry(path: str) -> Any:
    """A registry whose exposition is every process's metrics in ``path``."""
    from prometheus_client import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(path))
    return reg


def exposition(path: str) -> bytes:
    """The text a scrape gets (the Prometheus text format)."""
    from prometheus_client import generate_latest
    return bytes(generate_latest(registry(path)))


TEMP_PREFIX = "stepgate-metrics-"


def _prepare(given: str | None) -> str:
    """The directory every process writes in: the operator's PROMETHEUS_MULTIPROC_DIR,
    emptied of an earlier run's files, or a new one named after this process, removed at
    exit. A process stopped by a signal leaves its directory behind: the next start
    removes those of processes that are gone (and belonged to this user)."""
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        return given
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if name.startswith(TEMP_PREFIX):
            pid = name[len(TEMP_PREFIX):].partition("-")[0]
            old = os.path.join(base, name)
            if pid.isdigit() and not _alive(int(pid)) and os.stat(old).st_uid == os.getuid():
                shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _app(path: str) -> Callable[..., Iterable[bytes]]:
    from prometheus_client import make_wsgi_app
    metrics = make_wsgi_app(registry(path))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        return metrics(environ, start_response)
    return app


_listeners: list[Any] = []


def _listen(host: str, port: int, path: str) -> None:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = make_server(host, port, _app(path), Server, handler_class=Quiet)
    _listeners.append(server)
    threading.Thread(target=server.serve_forever, name="stepgate-metrics-listener",
                     daemon=True).start()


def _start(listen: tuple[str, int], workers: int) -> str:
    path = _prepare(os.environ.get(ENV))
    host, port = listen
    _listen(host, port, path)
    os.environ[ENV] = path  # after the listener: nothing counts where nobody reads
    log.info("metrics on http://%s:%d/metrics (%d server process%s)",
             f"[{host}]" if ":" in host else host, port, workers, "" if workers == 1 else "es")
    return path


def serve(settings: Any, workers: int) -> str | None:
    """Before the server starts (in the parent when there are several workers): when
    ``metrics.listen`` is set, prepare the directory every server process writes in (in
    PROMETHEUS_MULTIPROC_DIR, which the workers inherit) and answer ``GET /metrics`` on
    that address from a thread of this process. Returns the directory (None: off); exits
    with a message when the address cannot be listened on."""
    listen = settings.metrics.listen
    if listen is None:
        return None
    try:
        return _start(listen, workers)
    except OSError as exc:
        raise SystemExit(f"stepgate: cannot listen for metrics on {listen[0]}:{listen[1]}: "
                         f"{exc.strerror or exc}") from None


def stop() -> None:
    """Close the listeners this process started (tests; they end with the process)."""
    while _listeners:
        server = _listeners.pop()
        server.shutdown()
        server.server_close()
