"""Stepgate's benchmark: `python -m bench` (see docs/performance.md).

Measures, in one run against the same nginx upstream: the upstream directly, nginx
proxy_pass, a bare reference Python proxy on the gateway's stack, the gateway on an
allowed route, with a session token, with single-use request-bound tokens, the
verify endpoint, latency added at concurrency 1, and RSS growth while 100 MB
stream each way. Prints a table and writes bench/results/<time>.json.

``--stores sqlite,postgresql,postgresql+redis`` (or ``all``) measures the single-use tokens
and the verify endpoint on each of those stores side by side, one gateway per store.
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
from collections.abc import Callable
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


def auth_request_server(port: int, gateway: int, upstream: int) -> str:
    """nginx with auth_request to the gateway: the server block docs/forward-auth.md prints
    (the one the end-to-end tests run), with this run's ports."""
    text = (ROOT / "docs" / "forward-auth.md").read_text()
    marker = "<!-- tested: nginx -->\n"
    start = text.index("\n", text.index(marker) + len(marker)) + 1
    block = text[start:text.index("\n```", start)]
    return block.replace("127.0.0.1:8080", f"127.0.0.1:{gateway}").replace(
        "127.0.0.1:9000", f"127.0.0.1:{upstream}").replace(
        "listen 80;", f"listen 127.0.0.1:{port};")


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
        row["cpu_runs"] = [r["cpu_us_per_req"] for r in runs]
    for key in ("cpu_us_per_req", "store_cpu_us_per_req"):
        if key in row:
            cpu = sorted(r[key] for r in runs)
            row[key] = cpu[len(cpu) // 2]
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


STORES = ("sqlite", "postgresql", "postgresql+redis")


def store_list(text: str) -> list[str]:
    """``--stores``: names from STORES, comma-separated, or ``all``."""
    names = list(STORES) if text.strip() == "all" else [
        n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STORES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown store {', '.join(unknown) or '(none)'}: choose from {', '.join(STORES)} "
            "or all")
    return list(dict.fromkeys(names))


def pin_tree(pid: int, cpu: int) -> None:
    """Move a running server, every thread and every process it started, to ``cpu``
    (like ``pinned`` for the processes started here); what it forks later inherits it."""
    if (os.cpu_count() or 1) < 2:
        return
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(tid), {cpu})
            todo.extend(int(c) for c in
                        Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except OSError:
            continue


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the processes it started (still running) so far."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
            todo.extend(int(c) for c in
                        Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


class StoreServers:
    """PostgreSQL and Redis, from the tests' server helper (tests/servers.py), started only
    for the stores that need them and pinned to CPU 1 with the upstream and the load
    generator, so CPU 0 measures the gateway alone."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self._pg: Any = None
        self._redis: Any = None

    def _server(self, kind: str) -> Any:
        from tests import servers

        server = servers.postgres() if kind == "postgres" else servers.redis()
        if server not in self.started:
            self.started.append(server)
            assert server.proc is not None
            pin_tree(server.proc.pid, 1)
        return server

    def urls(self, store: str) -> tuple[str, str | None, list[int]]:
        """The store URL and the Redis URL (or None) of a fresh store of kind ``store``, and
        the process ids of the servers behind it."""
        if store == "sqlite":
            return "sqlite:///stepgate.db", None, []
        pg = self._server("postgres")
        db = pg.new_database()
        if store == "postgresql+redis":
            hot = self._server("redis")
            return db, hot.url(0), [pg.proc.pid, hot.proc.pid]
        return db, None, [pg.proc.pid]

    def stop(self) -> None:
        for server in self.started:
            server.stop()
            shutil.rmtree(server.dir, ignore_errors=True)


def setup_gateway(d: Path, upstream: int, port: int, n_tokens: int, n_verify: int,
                  store: str = "sqlite:///stepgate.db", hot: str | None = None, passes: int = 1
                  ) -> tuple[dict[str, str], dict[str, Any]]:
    """Config, keys, users, pre-minted tokens and pending challenges for the gateway runs.

    ``store`` and ``hot`` (a Redis URL) go into the configuration; tokens are minted for the
    instance id of that store as the gateway will open it (``<db id>.<redis epoch>`` with
    Redis) and challenges seeded through it. ``passes`` sets of ``n_tokens`` tokens
    (tokens-<i>.tsv) and of ``n_verify`` challenges, one set per measured pass."""
    import bcrypt
    import yaml

    from gateway.config.load import load_settings
    from gateway.decision.tokens import Bound, Signer, Ticket
    from gateway.factors.totp import TotpFactor, new_secret
    from gateway.keys import KeyRing, generate_data_key, generate_signing_key
    from gateway.store import ChallengeRecord, Store, open_store

    keys = {"STEPGATE_KEYS": generate_signing_key(), "STEPGATE_DATA_KEYS": generate_data_key()}
    users = ["bench"] + [f"v{i}" for i in range(n_verify * passes)]
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
        "policies": "policies/", "store": store, "default_action": "deny",
        "identity": {"basic": {"htpasswd": "users"}}, "audit": {"path": "audit.jsonl"},
        "throttle": {"challenges_per_window": 1000000},
        "forward_auth": {"trusted_proxies": ["127.0.0.1/32"]}, **({"redis": hot} if hot else {})}))
    os.environ.update(keys)
    settings = load_settings(d / "config.yaml")
    ring = KeyRing.from_settings(settings.keys)
    signer = Signer(ring.signing)

    def opened() -> Store:
        """The store as the gateway opens it (with Redis for the hot state if configured)."""
        return open_store(settings.store_url, settings.store_timeout, hot=settings.redis_url,
                          hot_prefix=settings.redis_prefix)

    async def instance() -> str:
        store = opened()
        await store.open()  # tokens name the store they are issued against
        await store.close()
        return store.instance_id
    signer.instance = asyncio.run(instance())
    now = time.time()
    session = signer.dump_token(signer.token(
        ticket=Ticket("n", "bench", "session", "session", now + 900, None), scope="bench",
        factors=("totp",), verified_at=now, now=now, ttl=900, uses=0, generation=0))
    body = '{"amount":5}'
    bound = Bound.of("POST", "/pay", b"", body.encode(), [(b"content-type", b"application/json"),
                                                          (b"host", b"127.0.0.1")])
    auth = "Basic " + __import__("base64").b64encode(b"bench:pw").decode()
    token_files = []
    for i in range(passes):
        lines = []
        for _ in range(n_tokens):
            tok = signer.token(ticket=Ticket("n", "bench", "pay", "request", now + 900, bound),
                               scope="pay", factors=("totp",), verified_at=now, now=now,
                               ttl=900, uses=1, generation=0)
            lines.append(f"POST\t/pay\t{auth}\tX-Stepgate-Token\t{signer.dump_token(tok)}\t"
                         f"{body}")
        token_files.append(d / ("tokens.tsv" if passes == 1 else f"tokens-{i}.tsv"))
        token_files[-1].write_text("\n".join(lines) + "\n")

    secrets_by_user: dict[str, str] = {}

    async def seed() -> list[str]:
        store = opened()
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
                  "challenges": challenge_ids, "users": users, "tokens": token_files,
                  "n_verify": n_verify}


def verify_list(d: Path, data: dict[str, Any], part: int = 0) -> Path:
    """The verify requests of pass ``part``, with codes valid now."""
    import base64

    import pyotp
    now = time.time()
    lines = []
    lo, hi = part * data["n_verify"], (part + 1) * data["n_verify"]
    for u, cid in zip(data["users"][1:][lo:hi], data["challenges"][lo:hi]):
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
    servers = StoreServers()
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
        # One gateway per store, each with its own configuration, tokens and challenges; the
        # first also serves the allowed and session routes. With several stores the
        # single-use runs are repeated in interleaved passes (one per round).
        stores: list[str] = args.stores
        passes = args.rounds if len(stores) > 1 else 1
        gateways: list[dict[str, Any]] = []
        for i, store in enumerate(stores):
            gd = d if i == 0 else d / f"gateway-{store.replace('+', '-')}"
            gd.mkdir(exist_ok=True)
            url, hot, server_pids = servers.urls(store)
            port = gw if i == 0 else free_port()
            keys, data = setup_gateway(gd, up, port, args.tokens, args.verify, url, hot, passes)
            proc = subprocess.Popen(pinned([sys.executable, "-m", "gateway", "run", "--config",
                                            str(gd / "config.yaml")], 0), cwd=ROOT,
                                    env=dict(os.environ, **keys), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            procs.append(proc)
            gateways.append({"store": store, "dir": gd, "port": port, "proc": proc,
                             "data": data, "server_pids": server_pids})
        gw_proc, data = gateways[0]["proc"], gateways[0]["data"]
        na = free_port()  # nginx asking the gateway (forward-auth mode)
        procs.append(start_nginx(d, "authreq", auth_request_server(na, gw, up), 0))
        # The same nginx asking an nginx that allows everything at no cost: the ceiling of
        # forward-auth mode on this machine, whatever answers the question.
        fa_nginx, nn = free_port(), free_port()
        procs.append(start_nginx(d, "allowall", f"""
  server {{
    listen 127.0.0.1:{fa_nginx};
    location / {{ return 200 ""; }}
  }}""", 0))
        procs.append(start_nginx(d, "authreq-nginx", auth_request_server(nn, fa_nginx, up), 0))
        for port in (up, nx, ref, hx, na, fa_nginx, nn, *(g["port"] for g in gateways)):
            wait_port(port)
        s, c = args.seconds, args.connections


        # warm every server and the identity cache
        for port in (up, nx, ref, gw, na, nn):
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
            ("nginx auth_request to nginx", f"http://127.0.0.1:{nn}/public/x", None, None),
            ("nginx auth_request allowed", f"http://127.0.0.1:{na}/public/x", gw_proc.pid, None),
            ("nginx auth_request session", f"http://127.0.0.1:{na}/session/a", gw_proc.pid,
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

        def measured(g: dict[str, Any], path: Path, concurrency: int) -> dict[str, Any]:
            """fire_list, with the gateway's CPU per request and its store servers'."""
            before = cpu_seconds(g["proc"].pid)
            before_store = sum(tree_cpu_seconds(pid) for pid in g["server_pids"])
            row = fire_list(f"http://127.0.0.1:{g['port']}", path, concurrency)
            n = max(1, row["requests"])
            row["cpu_us_per_req"] = round((cpu_seconds(g["proc"].pid) - before) * 1e6 / n, 1)
            if g["server_pids"]:
                row["store_cpu_us_per_req"] = round(
                    (sum(tree_cpu_seconds(pid) for pid in g["server_pids"]) - before_store)
                    * 1e6 / n, 1)
            return row

        token_runs: dict[str, list[dict[str, Any]]] = {g["store"]: [] for g in gateways}
        verify_runs: dict[str, list[dict[str, Any]]] = {g["store"]: [] for g in gateways}
        for i in range(passes):
            for g in (gateways if i % 2 == 0 else gateways[::-1]):
                gd, gdata = g["dir"], g["data"]
                if len(gateways) > 1:  # the identity cache holds the token user for 60 s
                    warm = gd / "warm-tokens.tsv"
                    warm.write_text(f"GET\t/.stepgate/factors\t{gdata['auth']}\t\t\t\n" * 200)
                    fire_list(f"http://127.0.0.1:{g['port']}", warm, c)
                token_runs[g["store"]].append(measured(g, gdata["tokens"][i], c))
                # warm the identity cache for the verify users, then verify each challenge once
                warm = gd / "warm.tsv"
                warm.write_text("".join(
                    f"GET\t/.stepgate/factors\t{line.split(chr(9))[2]}\t\t\t\n"
                    for line in verify_list(gd, gdata, i).read_text().splitlines()))
                fire_list(f"http://127.0.0.1:{g['port']}", warm, 8)
                verify_runs[g["store"]].append(measured(g, verify_list(gd, gdata, i), 8))
        token_note = f"{args.tokens} pre-minted tokens, each used once"
        verify_note = f"{args.verify} pending challenges, each verified once"
        if passes > 1:
            token_note += f"; median of {passes} passes interleaved with the other stores"
            verify_note += f"; median of {passes} passes interleaved with the other stores"
        by_store: dict[str, dict[str, Any]] = {}
        for g in gateways:
            store = g["store"]
            tok, ver = (r[0] if passes == 1 else median_row(r)
                        for r in (token_runs[store], verify_runs[store]))
            tok["note"], ver["note"] = token_note, verify_note
            if stores == ["sqlite"]:  # the default run names its rows as it always did
                rows["gateway request tokens"], rows["verify endpoint"] = tok, ver
            else:
                rows[f"request tokens ({store})"], rows[f"verify endpoint ({store})"] = tok, ver
            by_store[store] = {
                "request_tokens_rps": tok["rps"], "verify_rps": ver["rps"],
                "request_tokens_cpu_us": tok["cpu_us_per_req"],
                "verify_cpu_us": ver["cpu_us_per_req"],
                "request_tokens_store_cpu_us": tok.get("store_cpu_us_per_req"),
                "verify_store_cpu_us": ver.get("store_cpu_us_per_req"),
                "errors": tok["errors"] + ver["errors"]}
        if stores != ["sqlite"]:
            results["stores"] = by_store
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

        def cpu_ratio(a: str, b: str) -> float:
            per_round = sorted(x["cpu_us_per_req"] / y["cpu_us_per_req"]
                               for x, y in zip(samples[a], samples[b]))
            return round(per_round[len(per_round) // 2], 3)

        results["ratios"] = {
            "allowed / reference proxy (>= 0.9)": ratio("gateway allowed", "reference proxy"),
            "allowed / nginx proxy_pass (>= 0.2)": ratio("gateway allowed", "nginx proxy_pass"),
            "session token / allowed (>= 0.9)": ratio("gateway session token", "gateway allowed"),
            "nginx auth_request allowed / nginx proxy_pass (>= 0.4)": ratio(
                "nginx auth_request allowed", "nginx proxy_pass"),
            "nginx auth_request session / nginx proxy_pass": ratio(
                "nginx auth_request session", "nginx proxy_pass"),
            "nginx auth_request to nginx / nginx proxy_pass (the ceiling)": ratio(
                "nginx auth_request to nginx", "nginx proxy_pass"),
            "nginx auth_request allowed / gateway allowed": ratio(
                "nginx auth_request allowed", "gateway allowed"),
            "CPU per request, reference / allowed": round(
                r["reference proxy"]["cpu_us_per_req"] / r["gateway allowed"]["cpu_us_per_req"], 3),
            # The same pairing as the req/s ratios: each round's reference and allowed runs
            # are seconds apart, so a drift of the machine's speed cancels out.
            "CPU per request, reference / allowed (median of rounds)": cpu_ratio(
                "reference proxy", "gateway allowed"),
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
        servers.stop()
        shutil.rmtree(d, ignore_errors=True)


def report(results: dict[str, Any]) -> str:
    w = max(26, *(len(name) + 2 for name in results["rows"]))
    lines = [f"{'scenario':<{w}}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
             f"{'CPU us/req':>12}"]
    for name, row in results["rows"].items():
        cpu = row.get("cpu_us_per_req")
        lines.append(f"{name:<{w}}{row['rps']:>10.0f}{row['p50_ms']:>10.3f}"
                     f"{row['p99_ms']:>10.3f}{row['errors']:>8}"
                     f"{'' if cpu is None else f'{cpu:>12.1f}'}")
    if "stores" in results:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"
        lines.append("")
        lines.append(f"{'store':<20}{'tokens/s':>10}{'verify/s':>10}"
                     f"{'gateway CPU us (token/verify)':>32}{'store CPU us (token/verify)':>30}")
        for store, st in results["stores"].items():
            gw_cpu = f"{us(st['request_tokens_cpu_us'])} / {us(st['verify_cpu_us'])}"
            st_cpu = f"{us(st['request_tokens_store_cpu_us'])} / {us(st['verify_store_cpu_us'])}"
            lines.append(f"{store:<20}{st['request_tokens_rps']:>10.0f}{st['verify_rps']:>10.0f}"
                         f"{gw_cpu:>32}{st_cpu:>30}")
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
    if sys.argv[1:2] == ["soak"]:  # python -m bench soak --minutes N: bench/soak.py
        from bench.soak import main as soak

        soak(sys.argv[2:])
        return
    p = argparse.ArgumentParser(prog="python -m bench",
                                epilog="python -m bench soak --help: the endurance run")
    p.add_argument("--seconds", type=float, default=4.0, help="per throughput run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds, medians reported")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--tokens", type=int, default=20000, help="pre-minted single-use tokens")
    p.add_argument("--verify", type=int, default=1500, help="challenges to verify")
    p.add_argument("--stream-mb", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--no-install", action="store_true", help="never apt-get missing tools")
    p.add_argument("--stores", type=store_list, default=["sqlite"],
                   help="stores to measure single-use tokens and the verify endpoint on, "
                        f"comma-separated from {', '.join(STORES)}, or all (PostgreSQL and "
                        "Redis from tests/servers.py); the allowed and session routes run on "
                        "the first")
    args = p.parse_args()
    write_results(run(args), report, Path(args.out))


def write_results(results: dict[str, Any], report: Callable[[dict[str, Any]], str],
                  out: Path, suffix: str = "") -> None:
    """Print a run's report and keep its figures as bench/results/<time><suffix>.json."""
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(report(results))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{results['when'].replace(':', '')}{suffix}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
