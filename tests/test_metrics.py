"""Prometheus metrics in-process: off, they cost a call and touch nothing; on, every event
the gateway counts reaches the exposition (multiprocess files, as a scrape reads them),
with label values from the configuration only, never a user name, code or token."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.metrics import ENV, EVENTS, METRICS, Metrics, exposition, serve
from gateway.proxy import HttpxForwarder
from gateway.proxy.forwarder import UpstreamError
from gateway.store import StoreUnavailable
from gateway.store.sqlite.connection import Connection, guard

from .api import conftest as api
from .conftest import HERE, ROOT, free_port
from .forwardauth.conftest import make_env
from .totp_ref import hotp

make_app = api.make_app  # the in-process gateway of the endpoint tests

pytestmark = pytest.mark.anyio
P = "/.stepgate"
NOW = 1_800_000_000.0
STEP = int(NOW // 30)
LISTEN = {"listen": "127.0.0.1:9"}  # the address is never listened on here: serve() is not run
RULES = [
    {"name": "open", "match": {"paths": ["/open/**"]}, "action": "allow"},
    {"name": "admin", "match": {"paths": ["/admin/**"]}, "action": "deny"},
    {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
     "require": {"factors": ["totp", "recovery"], "binding": "request"}},
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def settings(listen: tuple[str, int] | None) -> Any:
    return SimpleNamespace(metrics=SimpleNamespace(listen=listen))


def scrape(path: str) -> tuple[str, Samples]:
    """What a scrape would read now: the text, and every sample by name and labels."""
    METRICS.flush()
    text = exposition(path).decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, decision: str, rule: str) -> float:
    return value(samples, "stepgate_requests_total", decision=decision, rule=rule)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A directory as ``serve`` prepares it; whatever turns the metrics on is turned off
    again afterwards."""
    path = tmp_path / "metrics"
    path.mkdir()
    monkeypatch.setenv(ENV, str(path))
    METRICS.close()
    yield str(path)
    METRICS.close()


def wrong(secret: str) -> str:
    return next(c for c in ("000000", "111111", "222222")
                if c not in {hotp(secret, STEP + d) for d in range(-2, 3)})


async def enrol(client: httpx.AsyncClient, user: str) -> str:
    r = await client.post(f"{P}/factors/totp", json={}, auth=(user, api.PW))
    assert r.status_code == 201, r.text
    ok = await client.post(r.json()["confirm_uri"], auth=(user, api.PW),
                           json={"code": hotp(r.json()["secret"], STEP)})
    assert ok.status_code == 200, ok.text
    return str(r.json()["secret"])


# ---------------------------------------------------------------------- off


async def test_off_every_event_does_nothing_and_nothing_is_touched(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    METRICS.close()
    temp = set(os.listdir(tempfile.gettempdir()))
    assert serve(settings(None), 2) is None
    METRICS.configure(settings(None))
    assert not METRICS.enabled and METRICS.directory is None
    # The class's own no-op methods, nothing put on the instance.
    assert not any(name in vars(METRICS) for name in EVENTS)
    assert METRICS.clock() == 0.0
    for call in (lambda: METRICS.decision("allowed", "open"), lambda: METRICS.challenge("totp"),
                 lambda: METRICS.verification("totp", "ok"), lambda: METRICS.lockout(True),
                 lambda: METRICS.throttled("sends"), lambda: METRICS.delivery("sms", True),
                 lambda: METRICS.reservation("ok"), lambda: METRICS.settlement("committed"),
                 lambda: METRICS.upstream(0.0), lambda: METRICS.upstream_error("connect"),
                 lambda: METRICS.store("sqlite", "hit", 0.0),
                 lambda: METRICS.store_error("sqlite", "hit", "timeout"),
                 lambda: METRICS.reload(False), METRICS.flush):
        assert call() is None
    async with make_app(rules=RULES) as (app, client):  # a gateway without `metrics:`
        assert (await client.get("/open/a")).status_code == 200
        assert (await client.get("/admin/a")).status_code == 403
    assert not METRICS.enabled
    assert ENV not in os.environ
    assert set(os.listdir(tempfile.gettempdir())) - temp == set()


def test_off_an_event_costs_one_call_on_it_costs_no_file_write(metrics_dir: str) -> None:
    """Off: as cheap as calling an empty method. On: a counter kept in the process (far
    below prometheus-client's ``inc`` on a shared file, which takes a lock and a system
    call), written out by the flush."""
    def cost(call: Any, n: int = 20000) -> float:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                call("allowed", "open")
            best = min(best, time.perf_counter() - t)
        return best / n

    class Empty:
        def decision(self, kind: str, rule: str | None) -> None:
            pass
    empty = cost(Empty().decision)
    assert cost(METRICS.decision) < empty * 3 + 50e-9
    METRICS.configure(settings(("127.0.0.1", 9)))
    on = cost(METRICS.decision)
    from prometheus_client import Counter
    child = Counter("x", "x", ("a", "b"), registry=None).labels("allowed", "open")
    direct = cost(lambda a, b: child.inc())
    assert on < direct / 2, (on, direct)
    _text, samples = scrape(metrics_dir)
    assert requests(samples, "allowed", "open") == 20000 * 5  # on; off: nothing


# ---------------------------------------------------------------------- on, in a gateway


async def test_decisions_and_the_handshake_are_counted_without_user_names(
        make_app: Any, metrics_dir: str) -> None:
    async with make_app(rules=RULES, metrics=LISTEN,
                        throttle={"lock_after": 2}) as (app, client):
        assert METRICS.enabled and METRICS.directory == metrics_dir
        for _ in range(3):  # decided once, then remembered: both counted
            assert (await client.get("/open/a")).status_code == 200
        assert (await client.get("/admin/a")).status_code == 403
        assert (await client.get("/elsewhere")).status_code == 403  # default_action: deny
        assert (await client.get("/open/%2e%2e/admin")).status_code == 400
        assert (await client.get(f"{P}/health")).status_code == 200
        # alice: challenged, then the handshake, then the token (once)
        secret = await enrol(client, "alice")
        first = await client.post("/pay", json={"amount": 5})
        assert first.status_code == 401
        ticket = first.json()["ticket"]
        ch = (await client.post(f"{P}/challenges", json={"ticket": ticket})).json()
        reused = await client.post(ch["verify_uri"], json={"code": hotp(secret, STEP)})
        assert reused.status_code == 403  # the enrolment spent this step's code
        bad = await client.post(ch["verify_uri"], json={"code": wrong(secret)})
        assert bad.json()["type"].endswith("wrong-code")
        ok = await client.post(ch["verify_uri"], json={"code": hotp(secret, STEP + 1)})
        assert ok.status_code == 200, ok.text
        token = ok.json()["token"]
        paid = await client.post("/pay", json={"amount": 5}, headers={"X-Stepgate-Token": token})
        assert paid.status_code == 200
        again = await client.post("/pay", json={"amount": 5}, headers={"X-Stepgate-Token": token})
        assert again.status_code == 401  # used up: a new ticket
        # bob: two wrong codes lock him (lock_after: 2); then his answers are refused
        bob = await enrol(client, "bob")
        ticket = (await client.post("/pay", json={}, auth=("bob", api.PW))).json()["ticket"]
        ch = (await client.post(f"{P}/challenges", json={"ticket": ticket},
                                auth=("bob", api.PW))).json()
        for status in (403, 429):
            r = await client.post(ch["verify_uri"], json={"code": wrong(bob)},
                                  auth=("bob", api.PW))
            assert r.status_code == status, r.text
        r = await client.post(ch["verify_uri"], json={"code": hotp(bob, STEP + 1)},
                              auth=("bob", api.PW))
        assert r.status_code == 429
        text, s = scrape(metrics_dir)

    assert requests(s, "allowed", "open") == 3
    assert requests(s, "denied", "admin") == 1
    assert requests(s, "denied", "(default)") == 1
    assert requests(s, "refused", "(none)") == 1
    assert requests(s, "challenged", "pay") == 2  # alice's first and bob's
    assert requests(s, "token", "pay") == 1
    assert requests(s, "rejected", "pay") == 1
    assert requests(s, "own", "(none)") >= 10  # health, enrolments, challenges, answers
    assert value(s, "stepgate_challenges_total", factor="totp") == 2
    v = "stepgate_verifications_total"
    assert value(s, v, factor="totp", outcome="reused") == 1
    assert value(s, v, factor="totp", outcome="wrong") == 3
    assert value(s, v, factor="totp", outcome="ok") == 1
    assert value(s, v, factor="totp", outcome="locked") == 1
    assert value(s, "stepgate_lockouts_total", kind="timed") == 1
    assert value(s, "stepgate_lockouts_total", kind="hard") == 0
    assert value(s, "stepgate_throttled_total", limit="locked") == 1
    r = "stepgate_token_reservations_total"
    assert (value(s, r, outcome="ok"), value(s, r, outcome="used"),
            value(s, r, outcome="busy")) == (1, 1, 0)
    assert value(s, "stepgate_token_settlements_total", result="committed") == 1
    assert value(s, "stepgate_upstream_latency_seconds_count") == 4  # 3 × open, 1 × pay
    assert value(s, "stepgate_upstream_latency_seconds_bucket", le="+Inf") == 4
    assert 0 < value(s, "stepgate_upstream_latency_seconds_sum") < 5
    assert value(s, "stepgate_store_latency_seconds_count", backend="sqlite",
                 op="reserve_use") == 2
    assert value(s, "stepgate_config_last_reload_success") == 1
    for private in ("alice", "bob", api.PW, secret, bob, token, ticket, hotp(secret, STEP + 1)):
        assert private not in text


async def test_forward_auth_asks_answered_by_the_server_itself_are_counted(
        tmp_path: Path, metrics_dir: str) -> None:
    """The quick path (the server writes the answer, no ASGI cycle) counts too."""
    env, app = await make_env(tmp_path, metrics=LISTEN)
    try:
        ask = {"host": "api.test", "x-original-method": "GET", "x-original-uri": "/open/x"}
        r = await env.client.get(f"{P}/auth/nginx", headers=ask)
        assert r.status_code == 200
        scope = {"type": "http", "method": "GET", "raw_path": f"{P}/auth/nginx".encode(),
                 "query_string": b"", "client": ("127.0.0.1", 5000),
                 "headers": [(k.encode(), v.encode()) for k, v in ask.items()]}
        assert app.quick(scope) is not None
        assert app.quick(scope) is not None
    finally:
        await env.client.aclose()
        await app.shutdown()
    _text, s = scrape(metrics_dir)
    assert requests(s, "allowed", "open") == 3


async def test_deliveries_by_channel_and_outcome(make_app: Any, metrics_dir: str,
                                                 tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    send = [sys.executable, str(HERE / "send_code.py"), str(outbox)]
    factors = {"totp": {}, "sms": {"deliver": {"command": send}},
               "pager": {"address": "any", "deliver": {"command": [*send, "3"]}}}
    async with make_app(rules=RULES, metrics=LISTEN, factors=factors) as (_app, client):
        r = await client.post(f"{P}/factors/sms", json={"address": "+33612345678"})
        assert r.status_code == 201, r.text
        r = await client.post(f"{P}/factors/pager", json={"address": "desk 7"})
        assert r.status_code == 502, r.text
        text, s = scrape(metrics_dir)
    d = "stepgate_deliveries_total"
    assert value(s, d, channel="sms", outcome="ok") == 1
    assert value(s, d, channel="pager", outcome="failed") == 1
    assert value(s, d, channel="sms", outcome="failed") == 0
    assert "+33612345678" not in text and "desk 7" not in text


# ---------------------------------------------------------------------- on, each layer


async def test_upstream_errors_by_kind(metrics_dir: str) -> None:
    METRICS.configure(settings(("127.0.0.1", 9)))
    failures = [httpx.ConnectError("x"), httpx.ConnectTimeout("x"), httpx.ReadTimeout("x"),
                httpx.RemoteProtocolError("x"), httpx.PoolTimeout("x")]
    for exc in failures:
        def fail(request: httpx.Request, exc: Exception = exc) -> httpx.Response:
            raise exc
        fwd = HttpxForwarder("http://upstream.test", transport=httpx.MockTransport(fail))
        with pytest.raises(UpstreamError):
            await fwd.send("GET", "/", [], None)
        await fwd.aclose()
    _text, s = scrape(metrics_dir)
    e = "stepgate_upstream_errors_total"
    assert {k: value(s, e, kind=k) for k in metrics.UPSTREAM_ERRORS} == {
        "connect": 1, "timeout": 2, "other": 1, "busy": 1, "interrupted": 0}
    assert value(s, "stepgate_upstream_latency_seconds_count") == 0


class Broken(Connection):
    @guard
    def broken(self) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    @guard
    def slow(self) -> None:
        time.sleep(0.3)


async def test_store_latency_and_errors_by_operation(metrics_dir: str, tmp_path: Path) -> None:
    METRICS.configure(settings(("127.0.0.1", 9)))
    store = Broken(str(tmp_path / "s.db"), timeout=0.1)
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):
            await store.broken()
        with pytest.raises(StoreUnavailable):
            await store.slow()
        await asyncio.sleep(0.3)  # the thread finishes the slow call
    finally:
        await store.close()
    _text, s = scrape(metrics_dir)
    e = "stepgate_store_errors_total"
    assert value(s, e, backend="sqlite", op="broken", kind="error") == 1
    assert value(s, e, backend="sqlite", op="slow", kind="timeout") == 1
    assert value(s, e, backend="sqlite", op="slow", kind="error") == 0
    h = "stepgate_store_latency_seconds"
    assert value(s, f"{h}_count", backend="sqlite", op="slow") == 1
    assert 0.09 < value(s, f"{h}_sum", backend="sqlite", op="slow") < 0.3
    assert value(s, f"{h}_bucket", backend="sqlite", op="slow", le="0.05") == 0
    assert value(s, f"{h}_bucket", backend="sqlite", op="slow", le="0.25") == 1


def test_reloads_and_the_last_reload_gauge(metrics_dir: str) -> None:
    METRICS.configure(settings(("127.0.0.1", 9)))
    _text, s = scrape(metrics_dir)
    assert value(s, "stepgate_config_last_reload_success") == 1  # nothing reloaded yet
    assert value(s, "stepgate_config_reloads_total", outcome="failed") == 0
    METRICS.reload(False)
    _text, s = scrape(metrics_dir)
    assert value(s, "stepgate_config_last_reload_success") == 0
    assert value(s, "stepgate_config_reloads_total", outcome="failed") == 1
    METRICS.reload(True)
    _text, s = scrape(metrics_dir)
    assert value(s, "stepgate_config_last_reload_success") == 1
    assert value(s, "stepgate_config_reloads_total", outcome="ok") == 1


CHILD = """
import sys
from types import SimpleNamespace
from gateway.metrics import METRICS
METRICS.configure(SimpleNamespace(metrics=SimpleNamespace(listen=("127.0.0.1", 9))))
for _ in range(int(sys.argv[1])):
    METRICS.decision("allowed", "open")
METRICS.reload(False)
"""


def test_processes_are_summed_and_ended_ones_keep_their_counts(metrics_dir: str) -> None:
    """Two other processes count and exit (what they counted is written out at exit);
    the scrape sums them with this one. A gauge of an ended process no longer counts."""
    METRICS.configure(settings(("127.0.0.1", 9)))
    METRICS.decision("allowed", "open")
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(n)], cwd=ROOT,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
                for n in (40, 2)]
    assert [c.wait(30) for c in children] == [0, 0]
    _text, s = scrape(metrics_dir)
    assert requests(s, "allowed", "open") == 43
    assert value(s, "stepgate_config_reloads_total", outcome="failed") == 2
    assert value(s, "stepgate_config_last_reload_success") == 1  # this process's; theirs ended
    assert not [n for n in os.listdir(metrics_dir)
                if n.startswith("gauge_live") and not n.endswith(f"_{os.getpid()}.db")]


def test_metrics_is_the_lowest_layer() -> None:
    assert not [m for m in vars(metrics).values()
                if getattr(m, "__name__", "").startswith("gateway.") and m is not metrics]
    assert isinstance(METRICS, Metrics)


@pytest.fixture
def no_directory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PROMETHEUS_MULTIPROC_DIR yet; whatever listens or counts is stopped afterwards."""
    monkeypatch.delenv(ENV, raising=False)
    METRICS.close()
    yield
    METRICS.close()
    metrics.stop()
    os.environ.pop(ENV, None)  # set by serve(); monkeypatch then puts back any earlier one


def test_serve_prepares_the_directory_and_answers_only_metrics(no_directory: None) -> None:
    port = free_port()
    path = serve(settings(("127.0.0.1", port)), 2)
    assert path is not None and os.environ[ENV] == path
    assert os.path.basename(path).startswith(f"{metrics.TEMP_PREFIX}{os.getpid()}-")
    METRICS.configure(settings(("127.0.0.1", port)))  # a server process: the same directory
    assert METRICS.directory == path
    METRICS.decision("challenged", "pay")
    METRICS.flush()
    r = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'stepgate_requests_total{decision="challenged",rule="pay"} 1.0' in r.text
    for other in ("/", "/metrics/", "/favicon.ico", "/x/metrics"):
        assert httpx.get(f"http://127.0.0.1:{port}{other}").status_code == 404
    with pytest.raises(SystemExit, match="cannot listen for metrics on 127.0.0.1"):
        serve(settings(("127.0.0.1", port)), 1)  # taken


def test_a_process_without_serve_listens_itself(no_directory: None) -> None:
    """A gateway started without ``stepgate run`` (another ASGI server) serves its own."""
    port = free_port()
    METRICS.configure(settings(("127.0.0.1", port)))
    assert METRICS.enabled and os.environ[ENV] == METRICS.directory
    METRICS.decision("allowed", None)
    METRICS.flush()
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'stepgate_requests_total{decision="allowed",rule="(default)"} 1.0' in text


def test_a_taken_address_leaves_the_metrics_off(no_directory: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        METRICS.configure(settings(taken.getsockname()))
    assert not METRICS.enabled and ENV not in os.environ
