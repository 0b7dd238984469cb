"""`python -m bench soak` runs for six seconds, so it does not rot. It asserts the report's
shape and that every request of the mix was answered 200, never speed or memory figures
(docs/performance.md: no timed assertions). Skipped where nginx or wrk is missing (the soak
is run with --no-install here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

HAVE_TOOLS = bool(shutil.which("wrk") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()))


@pytest.mark.skipif(not HAVE_TOOLS, reason="the soak needs nginx and wrk")
def test_soak_runs_and_writes_its_report(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "soak", "--minutes", "0.1", "--no-install",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (report,) = tmp_path.glob("*-soak.json")
    doc = json.loads(report.read_text())
    assert doc["kind"] == "soak" and doc["minutes"] == 0.1 and doc["fraction"] == 0.5
    # the maximum was measured, and the paced rate is half of it
    assert doc["probe"]["rps"] > 0 and doc["probe"]["errors"] == 0
    assert doc["rate"] == max(3, round(doc["probe"]["rps"] / 2))
    load = doc["load"]
    # every request of the schedule was sent and answered 200, the tokens each once
    assert load["sent"] == load["answered"] > 0
    assert load["errors"] == 0 and load["non_2xx"] == {} and load["socket_errors"] == {}
    assert load["tokens_short"] == 0
    assert doc["tokens_minted"] >= load["by_kind"]["token"]["answered"] > 0
    kinds = {k: v["answered"] for k, v in load["by_kind"].items()}
    assert set(kinds) == {"allowed", "session", "token"}
    assert max(kinds.values()) - min(kinds.values()) <= 1  # one in three each, in turn
    for key in ("p50_ms", "p99_ms", "max_ms", "from_due_p50_ms", "from_due_p99_ms"):
        assert load[key] > 0
    assert load["p50_ms"] <= load["p99_ms"] <= load["max_ms"]
    assert load["from_due_p99_ms"] >= load["p99_ms"]  # the due time is never after the write
    warm = load["after_warmup"]
    assert 0 < warm["answered"] < load["answered"] and warm["p50_ms"] <= warm["p99_ms"]
    # windows of three seconds, which hold every answer between them
    assert 2 <= len(load["windows"]) <= 3  # 3 when the last answers came late
    assert sum(w["answered"] for w in load["windows"]) == load["answered"]
    # memory and open files, sampled every second
    assert doc["warmup_s"] == 0.6
    assert len(load["samples"]) >= 3
    for key in ("rss_mb", "fds"):
        row = doc[key]
        assert set(row) >= {"start", "after_warmup", "max", "end", "idle_after"}
        assert 0 < row["after_warmup"] <= row["max"] and row["end"] <= row["max"]
    assert doc["rss_mb"]["growth_after_warmup"] == round(
        doc["rss_mb"]["end"] - doc["rss_mb"]["after_warmup"], 2)
    assert doc["gateway_alive"] is True
    # what else ran on the machine: each CPU's busy share, and CPU 0's per window
    assert len(load["cpu_busy"]) == os.cpu_count()
    assert all(0 <= x <= 1 for x in load["cpu_busy"])
    assert all(0 <= w["cpu0_busy"] <= 1 and w["from_due_p99_ms"] > 0 for w in load["windows"])
    assert "RSS growth after the warm-up" in r.stdout and "requests sent" in r.stdout


@pytest.mark.parametrize("minutes", ["0", "-1", "14"])
def test_soak_refuses_a_length_out_of_range(minutes: str) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "soak", "--minutes", minutes], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "argument --minutes" in r.stderr
