"""Prometheus metrics of a real gateway: on their own listener only, exact totals summed
over every worker process, no user name in them."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import PASSWORD, USERS, basic, free_port

pytestmark = pytest.mark.e2e
REQUESTS = "stepgate_requests_total"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def requests(text: str, decision: str, rule: str) -> float:
    return samples(text).get((REQUESTS, frozenset({"decision": decision, "rule": rule}.items())),
                             0.0)


def allowed(text: str) -> float:
    return requests(text, "allowed", "public")


def scrape_until(url: str, done: Callable[[str], bool]) -> str:
    """/metrics once ``done`` says so (each process writes its counts within a second),
    read again a little later: nothing is counted twice, or late."""
    deadline = time.monotonic() + 10
    while not done(httpx.get(url).text) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)  # more than a flush interval
    return httpx.get(url).text


def send(url: str, n: int, concurrency: int = 16) -> None:
    """``n`` requests, each on a new connection, several at a time: the kernel hands the
    connections to whichever worker accepts first."""
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        def one(_: int) -> int:
            return client.get(url, headers={"Connection": "close"}).status_code
        with ThreadPoolExecutor(concurrency) as pool:
            assert set(pool.map(one, range(n))) == {200}


def per_process(directory: Path) -> dict[str, float]:
    """What each process wrote: its pid -> allowed requests of the rule 'public'."""
    out = {}
    for f in directory.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(f)])
        out[f.stem.rpartition("_")[2]] = sum(
            s.value for m in metrics for s in m.samples
            if s.name == REQUESTS and s.labels == {"decision": "allowed", "rule": "public"})
    return out


def stale_counts(directory: Path) -> None:
    """Files a previous run left: counted, they would spoil every total below."""
    d = MmapedDict(str(directory / "counter_1.db"))
    d.write_value(mmap_key("stepgate_requests", REQUESTS, ["decision", "rule"],
                           ["allowed", "public"], "Requests by decision and rule"), 1000.0, 0.0)
    d.close()


def private_requests(gw: Any) -> None:
    """Users' requests to a protected route: denied (no factor enrolled), a token
    rejected, and nobody identified."""
    url = f"{gw.url}/settings/x"
    assert httpx.get(url, headers=basic("alice")).status_code == 403
    assert httpx.get(url, headers={**basic("bob"), "X-Stepgate-Token": "t0k"}).status_code == 401
    assert httpx.get(url).status_code == 401


def check_private(text: str) -> None:
    """They are counted, and leave no name, password or token in the metrics."""
    assert requests(text, "denied", "settings") == 1
    assert requests(text, "rejected", "settings") == 1
    assert requests(text, "challenged", "settings") == 1
    for private in (*USERS, PASSWORD, "t0k"):
        assert private not in text


def check_listeners(gw: Any, metrics_port: int) -> None:
    """/metrics only on the metrics listener; on the public port it is the API's path."""
    base = f"http://127.0.0.1:{metrics_port}"
    assert httpx.get(f"{base}/").status_code == 404
    assert httpx.get(f"{base}/metrics/x").status_code == 404
    public = httpx.get(f"{gw.url}/metrics")
    assert "stepgate_" not in public.text  # the upstream's answer (rule 'rest' forwards it)
    own = httpx.get(f"{gw.url}/.stepgate/metrics")
    assert own.status_code == 404
    assert own.headers["content-type"] == "application/problem+json"
    assert "stepgate_" not in own.text


def test_two_workers_are_summed_exactly(make_gateway: Any, tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    stale_counts(directory)
    port = free_port()
    gw = make_gateway(metrics={"listen": f"127.0.0.1:{port}"}, workers=2,
                      env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    metrics = f"http://127.0.0.1:{port}/metrics"
    assert allowed(httpx.get(metrics).text) == 0  # the stale file was removed
    private_requests(gw)
    sent = 0
    for _ in range(10):  # until both workers have served some (usually the first round)
        send(f"{gw.url}/public/hello", 200)
        sent += 200
        text = scrape_until(metrics, lambda t: allowed(t) >= sent)
        counts = per_process(directory)
        if len([c for c in counts.values() if c > 0]) == 2:
            break
    assert len([c for c in counts.values() if c > 0]) == 2, counts  # two workers counted...
    assert gw.proc is not None and str(gw.proc.pid) not in counts  # ...not the parent
    assert allowed(text) == sent == sum(counts.values())  # their sum, exactly
    assert samples(text)[("stepgate_upstream_latency_seconds_count", frozenset())] == sent
    assert samples(text)[("stepgate_config_last_reload_success", frozenset())] == 1
    check_private(text)
    check_listeners(gw, port)
    gw.stop()


def test_one_process(make_gateway: Any, tmp_path: Path) -> None:
    port = free_port()
    gw = make_gateway(metrics={"listen": f"127.0.0.1:{port}"}, env={"TMPDIR": str(tmp_path)})
    assert gw.proc is not None
    # No PROMETHEUS_MULTIPROC_DIR: a directory of its own, in the temporary directory.
    assert len(list(tmp_path.glob(f"stepgate-metrics-{gw.proc.pid}-*/counter_*.db"))) == 1
    metrics = f"http://127.0.0.1:{port}/metrics"
    send(f"{gw.url}/public/hello", 50, concurrency=4)
    for _ in range(3):
        assert httpx.get(f"{gw.url}/admin/x").status_code == 403
    private_requests(gw)
    text = scrape_until(metrics, lambda t: allowed(t) >= 50)
    assert allowed(text) == 50
    assert requests(text, "denied", "admin") == 3
    check_private(text)
    check_listeners(gw, port)
    gw.stop()
    # Stopped by SIGTERM, the server ends by the signal and leaves its directory behind;
    # the next start removes it.
    (left,) = tmp_path.glob("stepgate-metrics-*")
    again = make_gateway(metrics={"listen": f"127.0.0.1:{free_port()}"},
                         env={"TMPDIR": str(tmp_path)})
    assert again.proc is not None and not left.exists()
    assert [p.name.split("-")[2] for p in tmp_path.glob("stepgate-metrics-*")] == [
        str(again.proc.pid)]
    again.stop()
