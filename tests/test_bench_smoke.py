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
                                "gateway request tokens", "verify endpoint"}
    assert doc["rows"]["gateway request tokens"]["requests"] == 100
    assert doc["rows"]["gateway request tokens"]["errors"] == 0
    assert doc["rows"]["verify endpoint"]["errors"] == 0
    assert doc["streaming"]["download_status_bytes"] == [200, 5_000_000]
    assert doc["streaming"]["upload_status_bytes"] == [200, 5_000_000]
    assert "allowed / reference proxy (>= 0.9)" in doc["ratios"]
    assert "allowed / reference proxy (>= 0.9)" in r.stdout
