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


def pinned(cmd: list[str], cpu: int) -> list[str]:
    """Proxies under test on CPU 0, load generator and upstream on CPU 1: on a 2-core
    machine this keeps them from trading places and makes runs comparable."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


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


def start_nginx(d: Path, name: str, server: str, cpu: int) -> subprocess.Popen[bytes]:
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
    return subprocess.Popen(pinned([nginx_bin(), "-c", str(conf), "-p", str(d)], cpu),
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
        script: Path | None = None, env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-T5s"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(pinned(cmd + [url], 1), capture_output=True, text=True, env=env,
                         check=True).stdout
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




def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["rps"])
    row = dict(ordered[len(ordered) // 2])
    row["rps_runs"] = [r["rps"] for r in runs]
    if "cpu_us_per_req" in row:
        cpu = sorted(r["cpu_us_per_req"] for r in runs)
        row["cpu_us_per_req"] = cpu[len(cpu) // 2]
    return row


def fire_list(base: str, path: Path, concurrency: int) -> dict[str, Any]:
    """Send every request of a list exactly once (aiohttp, keep-alive), timing the whole.

    For one-shot work (single-use tokens, challenges) where wrk would cycle its list.
    The client shares the machine with the gateway, so these figures are conservative.
    """
    import aiohttp

    lines = [line.split("\t") for line in path.read_text().splitlines() if line]

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        queue = list(reversed(lines))
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(base, connector=conn) as session:
            async def worker() -> None:
                nonlocal errors
                while queue:
                    method, target, auth, name, value, body = queue.pop()
                    headers = {"Authorization": auth, "Content-Type": "application/json"}
                    if name:
                        headers[name] = value
                    t = time.perf_counter()
                    async with session.request(method, target, headers=headers,
                                               data=body.encode()) as resp:
                        await resp.read()
                        if resp.status >= 400:
                            errors += 1
                    latencies.append((time.perf_counter() - t) * 1000)
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
        latencies.sort()
        return {"rps": round(len(lines) / elapsed, 1),
                "p50_ms": round(latencies[len(latencies) // 2], 3),
                "p99_ms": round(latencies[int(len(latencies) * 0.99)], 3),
                "errors": errors, "requests": len(lines)}
    return asyncio.run(main())


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

    from gateway.config.load import load_settings
    from gateway.decision.tokens import Bound, Signer, Ticket
    from gateway.factors.totp import TotpFactor, new_secret
    from gateway.keys import KeyRing, generate_data_key, generate_signing_key
    from gateway.store import ChallengeRecord, open_store

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

    async def instance() -> str:
        store = open_store(settings.store_url)
        await store.open()  # tokens name the store they are issued against
        await store.close()
        return store.instance_id
    signer.instance = asyncio.run(instance())
    now = time.time()
    session = signer.dump_token(signer.token(
        ticket=Ticket("n", "bench", "session", "session", now + 900, None), scope="bench",
        factors=("totp",), verified_at=now, now=now, ttl=900, uses=0, generation=0))
    body = '{"amount":5}'
    bound = Bound.of("POST", "/pay", b"", body.encode(), [(b"content-type", b"application/json")])
    auth = "Basic " + __import__("base64").b64encode(b"bench:pw").decode()
    lines = []
    for _ in range(n_tokens):
        tok = signer.token(ticket=Ticket("n", "bench", "pay", "request", now + 900, bound),
                           scope="pay", factors=("totp",), verified_at=now, now=now, ttl=900,
                           uses=1, generation=0)
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
            await store.add_factor(TotpFactor(store, ring).record(u, fid, secret, label="bench",
                                                                  now=now))
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
    if not args.no_install:
        ensure_tools()
    d = Path(tempfile.mkdtemp(prefix="stepgate-bench-"))
    d.chmod(0o755)  # nginx workers run unprivileged and must read the files below
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "seconds": args.seconds, "connections": args.connections}
    try:
        files = d / "files"
        files.mkdir()
        big = files / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(args.stream_mb * 1_000_000)
        big.chmod(0o644)
        up, nx, ref, gw = free_port(), free_port(), free_port(), free_port()
        procs.append(start_nginx(d, "upstream", upstream_server(up, files), 1))
        procs.append(start_nginx(d, "proxy", proxy_server(nx, up), 0))
        ref_proc = subprocess.Popen(pinned(
            [sys.executable, "-m", "uvicorn", "bench.refproxy:app", "--host", "127.0.0.1",
             "--port", str(ref), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
             "--no-server-header", "--no-date-header", "--no-proxy-headers", "--log-level",
             "warning"], 0),
            cwd=ROOT, env=dict(os.environ, REF_UPSTREAM=f"http://127.0.0.1:{up}"))
        procs.append(ref_proc)
        hx = free_port()
        hx_proc = subprocess.Popen(pinned(
            [sys.executable, "-m", "uvicorn", "bench.refproxy:app", "--host", "127.0.0.1",
             "--port", str(hx), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
             "--no-server-header", "--no-date-header", "--no-proxy-headers", "--log-level",
             "warning"], 0),
            cwd=ROOT, env=dict(os.environ, REF_UPSTREAM=f"http://127.0.0.1:{up}",
                               REF_CLIENT="httpx"))
        procs.append(hx_proc)
        keys, data = setup_gateway(d, up, gw, args.tokens, args.verify)
        gw_proc = subprocess.Popen(pinned([sys.executable, "-m", "gateway", "run", "--config",
                                           str(d / "config.yaml")], 0), cwd=ROOT,
                                   env=dict(os.environ, **keys), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        procs.append(gw_proc)
        for port in (up, nx, ref, hx, gw):
            wait_port(port)
        s, c = args.seconds, args.connections


        # warm every server and the identity cache
        for port in (up, nx, ref, gw):
            wrk(f"http://127.0.0.1:{port}/public/x", seconds=1, connections=c)
        wrk(f"http://127.0.0.1:{gw}/session/a", seconds=1, connections=c,
            headers={"Authorization": data["auth"], "X-Stepgate-Token": data["session"]})
        rows: dict[str, dict[str, Any]] = {}
        auth_headers = {"Authorization": data["auth"], "X-Stepgate-Token": data["session"]}
        scenarios: list[tuple[str, str, int | None, dict[str, str] | None]] = [
            ("upstream direct", f"http://127.0.0.1:{up}/public/x", None, None),
            ("nginx proxy_pass", f"http://127.0.0.1:{nx}/public/x", None, None),
            ("reference proxy", f"http://127.0.0.1:{ref}/public/x", ref_proc.pid, None),
            ("gateway allowed", f"http://127.0.0.1:{gw}/public/x", gw_proc.pid, None),
            ("gateway session token", f"http://127.0.0.1:{gw}/session/a", gw_proc.pid,
             auth_headers),
        ]
        # Interleaved rounds, medians reported: one run alone swings by 20 % on a shared
        # 2-core machine; CPU time per request is the steadier figure.
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in scenarios}
        for i in range(args.rounds):
            # alternate the order so slow drifts of the machine hit every scenario alike
            for name, url, pid, hdrs in (scenarios if i % 2 == 0 else scenarios[::-1]):
                before = cpu_seconds(pid) if pid else 0.0
                row = wrk(url, seconds=s, connections=c, headers=hdrs)
                if pid:
                    row["cpu_us_per_req"] = round(
                        (cpu_seconds(pid) - before) * 1e6 / max(1, row["requests"]), 1)
                samples[name].append(row)
        for name, runs in samples.items():
            rows[name] = median_row(runs)
        # httpx's default transport, once and last: it falls so far behind that its backlog
        # would still be eating CPU 0 during the next scenario.
        before = cpu_seconds(hx_proc.pid)
        row = wrk(f"http://127.0.0.1:{hx}/public/x", seconds=s, connections=8)
        row["cpu_us_per_req"] = round((cpu_seconds(hx_proc.pid) - before) * 1e6 /
                                      max(1, row["requests"]), 1)
        row["note"] = "reference proxy on httpx's default transport, 8 connections, one run"
        rows["reference, httpx client"] = row
        hx_proc.terminate()
        time.sleep(1)
        rows["gateway request tokens"] = fire_list(f"http://127.0.0.1:{gw}", d / "tokens.tsv", c)
        rows["gateway request tokens"]["note"] = f"{args.tokens} pre-minted tokens, each used once"
        # warm the identity cache for the verify users, then verify each challenge once
        warm = d / "warm.tsv"
        warm.write_text("".join(f"GET\t/.stepgate/factors\t{line.split(chr(9))[2]}\t\t\t\n"
                                for line in verify_list(d, data).read_text().splitlines()))
        fire_list(f"http://127.0.0.1:{gw}", warm, 8)
        vlist = verify_list(d, data)
        rows["verify endpoint"] = fire_list(f"http://127.0.0.1:{gw}", vlist, 8)
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
            got = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                  f"http://127.0.0.1:{gw}/public/big.bin"], check=True,
                                 capture_output=True, text=True).stdout.split()
            stream["download_s"] = round(time.monotonic() - t0, 2)
            stream["download_status_bytes"] = [int(x) for x in got]
        stream["download_rss_growth_mb"] = rss.growth_mb
        with Rss(gw_proc.pid) as rss:
            t0 = time.monotonic()
            got = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
                                  "-H", "Expect:", "--data-binary", f"@{big}",
                                  f"http://127.0.0.1:{gw}/public/upload"], check=True,
                                 capture_output=True, text=True).stdout.split()
            stream["upload_status_bytes"] = [int(x) for x in got]
            stream["upload_s"] = round(time.monotonic() - t0, 2)
        stream["upload_rss_growth_mb"] = rss.growth_mb
        stream["size_mb"] = args.stream_mb
        results["streaming"] = stream
        r = rows
        def ratio(a: str, b: str) -> float:
            """Median over rounds of the per-round ratio: each pair ran minutes apart at most."""
            per_round = sorted(x["rps"] / y["rps"] for x, y in zip(samples[a], samples[b]))
            return round(per_round[len(per_round) // 2], 3)

        results["ratios"] = {
            "allowed / reference proxy (>= 0.9)": ratio("gateway allowed", "reference proxy"),
            "allowed / nginx proxy_pass (>= 0.2)": ratio("gateway allowed", "nginx proxy_pass"),
            "session token / allowed (>= 0.9)": ratio("gateway session token", "gateway allowed"),
            "CPU per request, reference / allowed": round(
                r["reference proxy"]["cpu_us_per_req"] / r["gateway allowed"]["cpu_us_per_req"], 3),
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
    lines = [f"{'scenario':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
             f"{'CPU us/req':>12}"]
    for name, row in results["rows"].items():
        cpu = row.get("cpu_us_per_req")
        lines.append(f"{name:<26}{row['rps']:>10.0f}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
                     f"{row['errors']:>8}{'' if cpu is None else f'{cpu:>12.1f}'}")
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
    p.add_argument("--seconds", type=float, default=4.0, help="per throughput run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds, medians reported")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--tokens", type=int, default=20000, help="pre-minted single-use tokens")
    p.add_argument("--verify", type=int, default=1500, help="challenges to verify")
    p.add_argument("--stream-mb", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--no-install", action="store_true", help="never apt-get missing tools")
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
