"""Instructions per request under callgrind: a deterministic companion to the benchmark.

    python -m bench.instructions [--seconds 8]

Runs the reference proxy, the gateway's allowed route and its session-token route one
after the other under ``valgrind --tool=callgrind`` (instrumentation switched on only
while wrk drives 8 connections) and prints instructions per request. Wall-clock figures
on a shared machine swing by 20 % between runs; these move by well under 1 %, so a change
to the hot path can be judged before the benchmark confirms it. Needs valgrind
(``apt-get install valgrind``) besides the benchmark's own nginx and wrk.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.__main__ import ROOT, free_port, setup_gateway, start_nginx, upstream_server, wait_port, wrk


def measure(kind: str, seconds: float) -> tuple[int, float]:
    d = Path(tempfile.mkdtemp(prefix="stepgate-cg-"))
    d.chmod(0o755)
    (d / "files").mkdir()
    up, port = free_port(), free_port()
    nginx = start_nginx(d, "upstream", upstream_server(up, d / "files"), 1)
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
          f"--callgrind-out-file={d}/cg.out"]
    headers = None
    path = "/public/x"
    if kind == "reference proxy":
        cmd = [sys.executable, "-m", "uvicorn", "bench.refproxy:app", "--host", "127.0.0.1",
               "--port", str(port), "--loop", "uvloop", "--http", "httptools",
               "--no-access-log", "--no-server-header", "--no-date-header",
               "--no-proxy-headers", "--log-level", "warning"]
        env = dict(os.environ, REF_UPSTREAM=f"http://127.0.0.1:{up}")
    else:
        keys, data = setup_gateway(d, up, port, 5, 1)
        if kind == "gateway session token":
            headers = {"Authorization": data["auth"], "X-Stepgate-Token": data["session"]}
            path = "/session/a"
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(d / "config.yaml")]
        env = dict(os.environ, **keys)
    proc = subprocess.Popen(vg + cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=120)
        url = f"http://127.0.0.1:{port}{path}"
        wrk(url, seconds=5, connections=8, headers=headers)  # warm, uninstrumented
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)
        row = wrk(url, seconds=seconds, connections=8, headers=headers)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       capture_output=True)
        time.sleep(1)
        total = 0
        for out in glob.glob(f"{d}/cg.out*"):
            for line in open(out):
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
        return row["requests"], total / max(1, row["requests"])
    finally:
        proc.terminate()
        proc.wait(30)
        nginx.terminate()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    got = {}
    for kind in ("reference proxy", "gateway allowed", "gateway session token"):
        n, ir = measure(kind, args.seconds)
        got[kind] = ir
        print(f"{kind:24s} {ir:12,.0f} instructions/request ({n} requests)", flush=True)
    print(f"reference / allowed     {got['reference proxy'] / got['gateway allowed']:.3f}")
    print(f"allowed / session token {got['gateway allowed'] / got['gateway session token']:.3f}")


if __name__ == "__main__":
    main()
