"""Stepgate's benchmark: `python -m bench` (see docs/performance.md).

Measures, in one run against the same nginx upstream: the upstream directly, nginx
proxy_pass, a bare reference Python proxy on the gateway's stack, the gateway on an
allowed route, with a session token, with single-use request-bound tokens, the
verify endpoint, latency added at concurrency 1, and RSS growth while 100 MB
stream each way. Prints a table and writes bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = "hello from upstream\n"


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk", "curl") if shutil.which(t) is None and
               not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: needs {', '.join(missing)} (apt-get install nginx wrk curl)")
    print(f"bench: installing {', '.join(missing)} from Debian packages", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx", "wrk",
                    "curl"], check=True, env=env)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port} after {timeout}s")


def start_nginx(d: Path, name: str, server: str) -> subprocess.Popen[bytes]:
    conf = d / f"{name}.conf"
    (d / name).mkdir(exist_ok=True)
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/{name}/body;
  proxy_temp_path {d}/{name}/proxy;
  fastcgi_temp_path {d}/{name}/fcgi;
  uwsgi_temp_path {d}/{name}/uwsgi;
  scgi_temp_path {d}/{name}/scgi;
  keepalive_requests 1000000;
  {server}
}}
""")
    return subprocess.Popen([nginx_bin(), "-c", str(conf), "-p", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def upstream_server(port: int, files: Path) -> str:
    return f"""
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
    location /public/big.bin {{ alias {files}/big.bin; }}
    location /public/upload {{ client_max_body_size 0; default_type text/plain;
                               return 200 "ok\\n"; }}
  }}"""


def proxy_server(port: int, upstream: int) -> str:
    return f"""
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1;
                  proxy_set_header Connection ""; }}
  }}"""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, *, seconds: float, connections: int, threads: int = 1,
        script: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-T5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, env=env, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = 0
    for m in re.finditer(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m2:
        errors += int(m2.group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": round(rps, 1), "p50_ms": round(_ms(lat.get("50", "nan")), 3),
            "p99_ms": round(_ms(lat.get("99", "nan")), 3), "errors": errors, "requests": total}


LIST_SCRIPT = """
local lines = {}
local counter = 0
local id = 0
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local threads_made = 0
function setup(thread)
  thread:set("id", threads_made)
  threads_made = threads_made + 1
end
function init(args)
  local i = 0
  for line in io.lines(os.getenv("BENCH_LIST")) do
    if i % nthreads == id then table.insert(lines, line) end
    i = i + 1
  end
end
function request()
  counter = counter + 1
  local line = lines[((counter - 1) % #lines) + 1]
  local method, path, auth, extra_name, extra_value, body =
    line:match("([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t(.*)")
  local headers = {["Authorization"] = auth, ["Content-Type"] = "application/json"}
  if extra_name ~= "" then headers[extra_name] = extra_value end
  return wrk.format(method, path, headers, body)
end
"""


class Rss:
    """Samples a process's resident set size (and its children's) while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()

    def read(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> Rss:
        self.base = self.read()
        self.peak = self.base

        def loop() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self.read())
                time.sleep(0.005)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.base) / 1e6, 2)


def setup_gateway(d: Path, upstream: int, port: int, n_tokens: int, n_verify: int
                  ) -> tuple[dict[str, str], dict[str, Any]]:
    """Config, keys, users, pre-minted tokens and pending challenges for the gateway runs."""
    import bcrypt
    import yaml

    from gateway.config import load_settings
    from gateway.factors.totp import new_secret, seal
    from gateway.keys import KeyRing, generate_data_key, generate_signing_key
    from gateway.store import ChallengeRecord, FactorRecord, open_store
    from gateway.tokens import Bound, Signer, Ticket

    keys = {"STEPGATE_KEYS": generate_signing_key(), "STEPGATE_DATA_KEYS": generate_data_key()}
    users = ["bench"] + [f"v{i}" for i in range(n_verify)]
    salt = bcrypt.gensalt(rounds=4)
    hashed = bcrypt.hashpw(b"pw", salt).decode()
    (d / "users").write_text("".join(f"{u}:{hashed}\n" for u in users))
    (d / "policies").mkdir(exist_ok=True)
    (d / "policies" / "bench.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "public", "match": {"paths": ["/public/**"]}, "action": "allow"},
        {"name": "session", "match": {"paths": ["/session/**"]},
         "require": {"factors": ["totp"], "binding": "session", "scope": "bench", "ttl": "15m"}},
        {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
         "require": {"factors": ["totp"], "binding": "request", "ttl": "15m"}},
    ]}))
    (d / "config.yaml").write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "upstream": {"url": f"http://127.0.0.1:{upstream}"},
        "policies": "policies/", "store": "sqlite:///stepgate.db", "default_action": "deny",
        "identity": {"basic": {"htpasswd": "users"}}, "audit": {"path": "audit.jsonl"},
        "throttle": {"challenges_per_window": 1000000}}))
    os.environ.update(keys)
    settings = load_settings(d / "config.yaml")
    ring = KeyRing.from_settings(settings.keys)
    signer = Signer(ring.signing)
    now = time.time()
    session = signer.dump_token(signer.token(
        ticket=Ticket("n", "bench", "session", "session", now + 900, None), scope="bench",
        factors=("totp",), verified_at=now, now=now, ttl=900, uses=0))
    body = '{"amount":5}'
    bound = Bound.of("POST", "/pay", b"", body.encode())
    auth = "Basic " + __import__("base64").b64encode(b"bench:pw").decode()
    lines = []
    for _ in range(n_tokens):
        tok = signer.token(ticket=Ticket("n", "bench", "pay", "request", now + 900, bound),
                           scope="pay", factors=("totp",), verified_at=now, now=now, ttl=900,
                           uses=1)
        lines.append(f"POST\t/pay\t{auth}\tX-Stepgate-Token\t{signer.dump_token(tok)}\t{body}")
    (d / "tokens.tsv").write_text("\n".join(lines) + "\n")

    secrets_by_user: dict[str, str] = {}

    async def seed() -> list[str]:
        store = open_store(settings.store_url)
        await store.open()
        out = []
        ticket = signer.ticket(user="", rule="pay", binding="request", bound=bound, now=now,
                               ttl=3600)
        nonce = signer.read_ticket(ticket, now).nonce  # type: ignore[union-attr]
        for u in users[1:]:
            secret = new_secret()
            fid = f"f_{u}"
            await store.add_factor(FactorRecord(fid, u, "totp", "active", "bench",
                                                seal(ring, u, fid, secret), now))
            cid = f"c_{u}_bench_challenge"
            await store.add_challenge(ChallengeRecord(cid, u, nonce, ticket, "totp", None,
                                                      "pending", 5, now, now + 3600, now + 3600))
            secrets_by_user[u] = secret
            out.append(cid)
        await store.close()
        return out
    challenge_ids = asyncio.run(seed())
    return keys, {"session": session, "auth": auth, "secrets": secrets_by_user,
                  "challenges": challenge_ids, "users": users}


def verify_list(d: Path, data: dict[str, Any]) -> Path:
    import base64

    import pyotp
    now = time.time()
    lines = []
    for u, cid in zip(data["users"][1:], data["challenges"]):
        code = pyotp.TOTP(data["secrets"][u]).at(now)
        auth = "Basic " + base64.b64encode(f"{u}:pw".encode()).decode()
        lines.append(f"POST\t/.stepgate/challenges/{cid}/verify\t{auth}\t\t\t"
                     f'{{"code":"{code}"}}')
    path = d / "verify.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_tools()
    d = Path(tempfile.mkdtemp(prefix="stepgate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "seconds": args.seconds, "connections": args.connections}
    try:
        files = d / "files"
        files.mkdir()
        big = files / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(args.stream_mb * 1_000_000)
        up, nx, ref, gw = free_port(), free_port(), free_port(), free_port()
        procs.append(start_nginx(d, "upstream", upstream_server(up, files)))
        procs.append(start_nginx(d, "proxy", proxy_server(nx, up)))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.refproxy:app", "--host", "127.0.0.1",
             "--port", str(ref), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
             "--no-server-header", "--no-date-header", "--log-level", "warning"],
            cwd=ROOT, env=dict(os.environ, REF_UPSTREAM=f"http://127.0.0.1:{up}")))
        keys, data = setup_gateway(d, up, gw, args.tokens, args.verify)
        gw_proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                    str(d / "config.yaml")], cwd=ROOT,
                                   env=dict(os.environ, **keys), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        procs.append(gw_proc)
        for port in (up, nx, ref, gw):
            wait_port(port)
        s, c = args.seconds, args.connections
        session_list = d / "session.tsv"
        session_list.write_text(f"GET\t/session/a\t{data['auth']}\tX-Stepgate-Token\t"
                                f"{data['session']}\t\n")
        script = d / "list.lua"
        script.write_text(LIST_SCRIPT)

        def listed(url: str, path: Path, seconds: float, conns: int) -> dict[str, Any]:
            env = dict(os.environ, BENCH_LIST=str(path), BENCH_THREADS="1")
            return wrk(url, seconds=seconds, connections=conns, script=script, env=env)

        # warm every server and the identity cache
        for port in (up, nx, ref, gw):
            wrk(f"http://127.0.0.1:{port}/public/x", seconds=1, connections=c)
        listed(f"http://127.0.0.1:{gw}", session_list, 1, c)
        rows: dict[str, dict[str, Any]] = {}
        rows["upstream direct"] = wrk(f"http://127.0.0.1:{up}/public/x", seconds=s, connections=c)
        rows["nginx proxy_pass"] = wrk(f"http://127.0.0.1:{nx}/public/x", seconds=s, connections=c)
        rows["reference proxy"] = wrk(f"http://127.0.0.1:{ref}/public/x", seconds=s, connections=c)
        rows["gateway allowed"] = wrk(f"http://127.0.0.1:{gw}/public/x", seconds=s, connections=c)
        rows["gateway session token"] = listed(f"http://127.0.0.1:{gw}", session_list, s, c)
        tok_seconds = min(s, max(1.0, args.tokens / 2500))
        rows["gateway request tokens"] = listed(f"http://127.0.0.1:{gw}", d / "tokens.tsv",
                                                tok_seconds, c)
        rows["gateway request tokens"]["note"] = (
            f"{args.tokens} pre-minted tokens; requests beyond them are replays (401)")
        # warm the identity cache for the verify users, then verify each challenge once
        warm = d / "warm.tsv"
        warm.write_text("".join(f"GET\t/.stepgate/factors\t{line.split(chr(9))[2]}\t\t\t\n"
                                for line in verify_list(d, data).read_text().splitlines()))
        listed(f"http://127.0.0.1:{gw}", warm, max(1.0, args.verify / 500), 4)
        vlist = verify_list(d, data)
        rows["verify endpoint"] = listed(f"http://127.0.0.1:{gw}", vlist,
                                         max(1.0, args.verify / 1500), 4)
        rows["verify endpoint"]["note"] = f"{args.verify} pending challenges, each verified once"
        lat_up = wrk(f"http://127.0.0.1:{up}/public/x", seconds=s, connections=1)
        lat_gw = wrk(f"http://127.0.0.1:{gw}/public/x", seconds=s, connections=1)
        lat_ref = wrk(f"http://127.0.0.1:{ref}/public/x", seconds=s, connections=1)
        results["rows"] = rows
        results["latency_c1"] = {
            "upstream": lat_up, "gateway": lat_gw, "reference": lat_ref,
            "added_p50_ms": round(lat_gw["p50_ms"] - lat_up["p50_ms"], 3),
            "added_p99_ms": round(lat_gw["p99_ms"] - lat_up["p99_ms"], 3),
        }
        stream: dict[str, Any] = {}
        with Rss(gw_proc.pid) as rss:
            t0 = time.monotonic()
            subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{gw}/public/big.bin"],
                           check=True)
            stream["download_s"] = round(time.monotonic() - t0, 2)
        stream["download_rss_growth_mb"] = rss.growth_mb
        with Rss(gw_proc.pid) as rss:
            t0 = time.monotonic()
            subprocess.run(["curl", "-sS", "-o", "/dev/null", "-H", "Expect:", "--data-binary",
                            f"@{big}", f"http://127.0.0.1:{gw}/public/upload"], check=True)
            stream["upload_s"] = round(time.monotonic() - t0, 2)
        stream["upload_rss_growth_mb"] = rss.growth_mb
        stream["size_mb"] = args.stream_mb
        results["streaming"] = stream
        r = rows
        results["ratios"] = {
            "allowed / reference proxy (>= 0.9)": round(r["gateway allowed"]["rps"] /
                                                        r["reference proxy"]["rps"], 3),
            "allowed / nginx proxy_pass (>= 0.2)": round(r["gateway allowed"]["rps"] /
                                                         r["nginx proxy_pass"]["rps"], 3),
            "session token / allowed (>= 0.8)": round(r["gateway session token"]["rps"] /
                                                      r["gateway allowed"]["rps"], 3),
        }
        return results
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


def report(results: dict[str, Any]) -> str:
    lines = [f"{'scenario':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"]
    for name, row in results["rows"].items():
        lines.append(f"{name:<26}{row['rps']:>10.0f}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
                     f"{row['errors']:>8}")
    lat = results["latency_c1"]
    lines.append("")
    lines.append(f"concurrency 1: upstream p50 {lat['upstream']['p50_ms']:.3f} ms, gateway p50 "
                 f"{lat['gateway']['p50_ms']:.3f} ms -> added p50 {lat['added_p50_ms']:.3f} ms "
                 f"(<= 1 ms), added p99 {lat['added_p99_ms']:.3f} ms")
    st = results["streaming"]
    lines.append(f"streaming {st['size_mb']} MB: download {st['download_s']} s, RSS growth "
                 f"{st['download_rss_growth_mb']} MB; upload {st['upload_s']} s, RSS growth "
                 f"{st['upload_rss_growth_mb']} MB (< 20 MB)")
    lines.append("")
    for k, v in results["ratios"].items():
        lines.append(f"{k:<40}{v:>8.3f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--tokens", type=int, default=20000, help="pre-minted single-use tokens")
    p.add_argument("--verify", type=int, default=1500, help="challenges to verify")
    p.add_argument("--stream-mb", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    results = run(args)
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(report(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{results['when'].replace(':', '')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
