"""Operations end to end on real gateway processes: reloading policies and configuration
while serving (file changes, SIGHUP, with one and with two workers), the access log, and a
graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from ..conftest import E2E_RULES, GatewayProcess, Upstream, basic, free_port

pytestmark = pytest.mark.e2e
DENY_PUBLIC = {"rules": [{"name": "public", "match": {"paths": ["/public/**"]}, "action": "deny"},
                         *E2E_RULES["rules"][1:]]}


def policy_file(gw: GatewayProcess) -> Any:
    return gw.config.parent / "policies" / "rules.yaml"


def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` held (raises after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


def status(gw: GatewayProcess, path: str) -> int:
    return httpx.get(gw.url + path, headers=basic("alice"), timeout=10).status_code


def test_a_changed_policy_file_applies_within_two_seconds(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway()
    assert status(gw, "/public/x") == 200
    policy_file(gw).write_text(yaml.safe_dump(DENY_PUBLIC))
    took = until(lambda: status(gw, "/public/x") == 403, timeout=2.0)
    assert took < 2.0
    assert "reload (file change): 9 rule(s) from policies/rules.yaml" in gw.output


def test_a_broken_policy_keeps_the_running_rules_and_reports_every_error(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    metrics = f"http://127.0.0.1:{free_port()}/metrics"
    gw = make_gateway(metrics={"listen": metrics.split("/")[2]})

    def reloaded_ok() -> str:
        lines = httpx.get(metrics).text.splitlines()
        return next(x for x in lines if x.startswith("stepgate_config_last_reload_success"))
    assert reloaded_ok().endswith(" 1.0")
    assert status(gw, "/public/x") == 200
    broken = {"rules": [
        {"name": "public", "match": {"path": ["/public/**"]}, "action": "deny"},
        {"name": "other", "match": {"paths": ["/x"]}, "actoin": "allow"},
        *E2E_RULES["rules"][1:]]}
    policy_file(gw).write_text(yaml.safe_dump(broken))
    until(lambda: "refused, the running configuration stays" in gw.output, timeout=5)
    out = gw.output
    assert "2 problem(s) in the configuration" in out
    assert "unknown key 'path', did you mean 'paths'?" in out
    assert "unknown key 'actoin', did you mean 'action'?" in out
    assert status(gw, "/public/x") == 200  # still the old rules
    until(lambda: reloaded_ok().endswith(" 0.0"), timeout=3)
    # Fixed: the next good reload applies.
    policy_file(gw).write_text(yaml.safe_dump(DENY_PUBLIC))
    until(lambda: status(gw, "/public/x") == 403, timeout=5)
    until(lambda: reloaded_ok().endswith(" 1.0"), timeout=3)


def test_sighup_reloads_the_configuration_and_names_what_needs_a_restart(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway()
    assert status(gw, "/optin/x") == 200  # unenrolled users pass 'optin'
    doc = yaml.safe_load(gw.config.read_text())
    doc["listen"] = f"127.0.0.1:{free_port()}"
    doc["default_action"] = "allow"
    rules = {"rules": [r for r in E2E_RULES["rules"] if r["name"] not in ("rest", "optin")]}
    policy_file(gw).write_text(yaml.safe_dump(rules))
    gw.config.write_text(yaml.safe_dump(doc))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: "take(s) effect at the next restart" in gw.output, timeout=5)
    assert "listen changed" in gw.output
    # Still serving on the old port, with the new rules and default action.
    assert status(gw, "/nothing/matches") == 200
    assert gw.proc.poll() is None


def test_an_inflight_request_finishes_under_the_rules_it_started_with(
        make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    gw = make_gateway(upstream={"url": upstream.url, "read_timeout": "5s"})
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(status(gw, "/public/slow?sleep=1.5")))
    t.start()
    time.sleep(0.3)
    policy_file(gw).write_text(yaml.safe_dump(DENY_PUBLIC))
    until(lambda: status(gw, "/public/x") == 403, timeout=3)
    t.join()
    assert result == [200]


def test_both_workers_reload(make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(workers=2)
    until(lambda: gw.output.count("Application startup complete") >= 2, timeout=20)
    policy_file(gw).write_text(yaml.safe_dump(DENY_PUBLIC))
    until(lambda: gw.output.count("reload (file change)") >= 2, timeout=10)
    # Fresh connections reach both workers: every one is refused now.
    assert {status(gw, "/public/x") for _ in range(30)} == {403}
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)  # to the supervisor: passed on to each worker
    until(lambda: gw.output.count("reload (SIGHUP)") >= 2, timeout=10)
    assert gw.proc.poll() is None


def test_the_access_log_has_one_line_per_request_without_secrets(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(access_log={"path": "access.jsonl"},
                      forward_auth={"trusted_proxies": ["127.0.0.1/32"]})
    log = gw.config.parent / "access.jsonl"
    assert httpx.get(f"{gw.url}/public/a?secret=s3cr3t").status_code == 200
    assert httpx.get(f"{gw.url}/admin/b", headers=basic("alice")).status_code == 403
    assert httpx.get(f"{gw.url}/public//c").status_code == 400
    assert httpx.get(f"{gw.url}/settings/x", headers={**basic("alice"),
                                                      "X-Stepgate-Token": "tok3n"}
                     ).status_code in (401, 403)
    for _ in range(2):
        assert httpx.get(f"{gw.url}/.stepgate/auth/nginx", headers={
            "X-Original-Method": "GET", "X-Original-URI": "/public/q"}).status_code == 200
    until(lambda: log.exists() and len(log.read_text().splitlines()) >= 7, timeout=5)
    text = log.read_text()
    for secret in ("s3cr3t", "secret=", "tok3n", "alice", "Basic"):
        assert secret not in text
    # the first line is the readiness probe of the test's start-up (GET /.stepgate/config)
    probe, *lines = [json.loads(x) for x in text.splitlines()]
    assert (probe["path"], probe["decision"], probe["status"]) == ("/.stepgate/config", "own",
                                                                   200)
    first = lines[0]
    assert set(first) >= {"ts", "request_id", "method", "path", "rule", "decision", "status",
                          "duration_ms", "upstream_ms"}
    assert (first["path"], first["rule"], first["decision"], first["status"]) == \
        ("/public/a", "public", "allow", 200)
    assert (lines[1]["decision"], lines[1]["status"], lines[1]["rule"]) == ("deny", 403, "admin")
    assert (lines[2]["path"], lines[2]["status"]) == (None, 400)
    asks = [x for x in lines if x["decision"] == "ask"]
    assert len(asks) == 2 and all(x["ingress"] == "nginx" and x["status"] == 200 for x in asks)
    assert len({x["request_id"] for x in lines}) == len(lines)


def test_sigterm_lets_an_inflight_request_finish_and_flushes_the_audit(
        make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    gw = make_gateway(upstream={"url": upstream.url, "read_timeout": "5s"},
                      shutdown_grace="10s")
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(
        httpx.get(f"{gw.url}/public/leaving?sleep=1.5", timeout=10)))
    t.start()
    time.sleep(0.4)
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGTERM)
    t.join()
    assert result[0].status_code == 200
    # uvicorn stops gracefully, then ends by the signal it was sent (as its default would)
    assert gw.proc.wait(15) in (0, -signal.SIGTERM)
    audit = gw.audit
    assert '"path":"/public/leaving"' in audit
    # No new connections once stopping.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gw.url}/public/x", timeout=2)
