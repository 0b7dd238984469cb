"""X-Request-Id end to end: believed from trusted proxies only, generated otherwise, passed
upstream once, and the same id in the request's audit events and problem+json body."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from ..conftest import GatewayProcess, Upstream, basic
from ..rawhttp import request

pytestmark = pytest.mark.e2e


def upstream_ids(upstream: Upstream) -> list[list[str]]:
    return [[v for k, v in r["headers"] if k.lower().replace("_", "-") == "x-request-id"]
            for r in upstream.records()]


def audit_ids(gw: GatewayProcess, path: str) -> list[str]:
    time.sleep(1.3)  # the audit stream is flushed every second
    return [json.loads(line).get("request_id") for line in gw.audit.splitlines()
            if f'"path":"{path}"' in line]


@pytest.fixture(scope="module")
def trusting(make_gateway: Any) -> GatewayProcess:
    return make_gateway(trusted_proxies=["127.0.0.1/32"])


def test_a_clients_request_id_is_replaced(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    r = httpx.get(f"{gateway.url}/public/rid-a", headers={"X-Request-Id": "chosen-by-client"})
    assert r.status_code == 200
    [[rid]] = upstream_ids(upstream)
    assert rid != "chosen-by-client" and len(rid) > 8
    assert audit_ids(gateway, "/public/rid-a") == [rid]
    # the '_' spelling a WSGI upstream would read as the same header never passes
    upstream.clear()
    raw = request(gateway.port, b"GET /public/rid-b HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Connection: close\r\nX_Request_Id: smuggled\r\n\r\n")
    assert raw.status == 200
    [[rid_b]] = upstream_ids(upstream)
    assert rid_b not in (rid, "smuggled")


def test_the_same_id_in_the_problem_and_the_audit(gateway: GatewayProcess) -> None:
    r = httpx.get(f"{gateway.url}/admin/rid", headers=basic("alice"))
    assert r.status_code == 403
    rid = r.json()["request_id"]
    assert audit_ids(gateway, "/admin/rid") == [rid]


def test_a_trusted_proxys_request_id_is_kept(trusting: GatewayProcess,
                                             upstream: Upstream) -> None:
    upstream.clear()
    r = httpx.get(f"{trusting.url}/public/rid-c", headers={"X-Request-Id": "edge-7f3a.1"})
    assert r.status_code == 200
    assert upstream_ids(upstream) == [["edge-7f3a.1"]]
    assert audit_ids(trusting, "/public/rid-c") == ["edge-7f3a.1"]
    denied = httpx.get(f"{trusting.url}/admin/x", headers={"X-Request-Id": "edge-7f3a.2"})
    assert denied.json()["request_id"] == "edge-7f3a.2"


@pytest.mark.parametrize("given", [['"quoted"'], ["a b"], ["x" * 200], ["one", "two"]])
def test_an_unusable_request_id_from_a_trusted_proxy_is_replaced(
        trusting: GatewayProcess, upstream: Upstream, given: list[str]) -> None:
    upstream.clear()
    head = b"GET /public/rid-d HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + b"".join(
        b"X-Request-Id: " + g.encode() + b"\r\n" for g in given) + b"\r\n"
    assert request(trusting.port, head).status == 200
    [[rid]] = upstream_ids(upstream)
    assert rid not in given
