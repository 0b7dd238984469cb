"""The benchmark runs for a second per scenario, so it does not rot. It asserts shape,
never speed (docs/performance.md: no timed assertions). Where nginx, wrk or curl is missing the
benchmark installs them from Debian packages (as root, like CI); skipped only where it
cannot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

HAVE_TOOLS = bool(shutil.which("wrk") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())
                  and shutil.which("curl"))
pytestmark = pytest.mark.skipif(
    not HAVE_TOOLS and os.geteuid() != 0,
    reason="the benchmark needs nginx, wrk and curl, and only root may install them")


def test_bench_runs_and_writes_its_report(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "--seconds", "1", "--rounds", "1",
                        "--tokens", "100", "--verify", "20", "--stream-mb", "5",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (report,) = tmp_path.glob("*.json")
    doc = json.loads(report.read_text())
    assert set(doc["rows"]) == {"upstream direct", "nginx proxy_pass", "reference proxy",
                                "reference, httpx client",
                                "gateway allowed", "gateway session token",
                                "nginx auth_request to nginx", "nginx auth_request allowed",
                                "nginx auth_request session",
                                "gateway request tokens", "verify endpoint"}
    # nginx asking the gateway: every request answered 2xx (the session route included)
    assert doc["rows"]["nginx auth_request allowed"]["errors"] == 0
    assert doc["rows"]["nginx auth_request session"]["errors"] == 0
    assert "nginx auth_request allowed / nginx proxy_pass (>= 0.4)" in doc["ratios"]
    assert doc["rows"]["gateway request tokens"]["requests"] == 100
    assert doc["rows"]["gateway request tokens"]["errors"] == 0
    assert doc["rows"]["verify endpoint"]["errors"] == 0
    assert doc["streaming"]["download_status_bytes"] == [200, 5_000_000]
    assert doc["streaming"]["upload_status_bytes"] == [200, 5_000_000]
    assert "allowed / reference proxy (>= 0.9)" in doc["ratios"]
    assert "allowed / reference proxy (>= 0.9)" in r.stdout


def _servers_available() -> bool:
    import glob
    return os.geteuid() == 0 or bool(shutil.which("redis-server")
                                     and glob.glob("/usr/lib/postgresql/*/bin/postgres"))


@pytest.mark.skipif(not _servers_available(),
                    reason="needs PostgreSQL and Redis installed, or root to install them")
def test_bench_compares_the_stores(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "--seconds", "1", "--rounds", "1",
                        "--tokens", "100", "--verify", "20", "--stream-mb", "5",
                        "--stores", "all", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (report,) = tmp_path.glob("*.json")
    doc = json.loads(report.read_text())
    stores = ["sqlite", "postgresql", "postgresql+redis"]
    assert list(doc["stores"]) == stores
    for store in stores:
        tokens = doc["rows"][f"request tokens ({store})"]
        verify = doc["rows"][f"verify endpoint ({store})"]
        assert (tokens["requests"], tokens["errors"]) == (100, 0), store
        assert (verify["requests"], verify["errors"]) == (20, 0), store
        assert tokens["rps"] > 0 and verify["rps"] > 0, store
        assert doc["stores"][store]["errors"] == 0
    # with --stores every store names its rows; the other routes run once, on the first
    assert "gateway request tokens" not in doc["rows"]
    assert "gateway allowed" in doc["rows"]
    assert "request tokens (postgresql+redis)" in r.stdout


def test_bench_refuses_an_unknown_store() -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "--stores", "sqlite,mysql"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "unknown store mysql" in r.stderr
