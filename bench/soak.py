"""Endurance: `python -m bench soak --minutes N` (see docs/performance.md, "Soak").

Starts the benchmark's nginx upstream and a gateway on SQLite (the functions of
bench/__main__.py), measures the maximum rate of the mix for a few seconds with wrk, then
sends the mix at a fraction of it (half by default) for N minutes from a paced, open-loop
generator in this process, while the gateway's RSS and open file descriptors are sampled
every second. Prints a table and writes bench/results/<time>-soak.json.

The mix, one request in three of each, each expected to answer 200:

- allowed: ``GET /public/x`` (an ``allow`` rule);
- session token: ``GET /session/a`` with the bench user's Basic identity and a session token;
- request token: ``POST /pay`` with a pre-minted request-bound single-use token, each used
  once, as the benchmark's "gateway request tokens" scenario.

The maximum is measured on a first gateway (with its own tokens), which is then stopped; the
soak runs on a second one, started on the same upstream with enough tokens minted for the
whole run at the chosen rate. Placement as in the benchmark: the gateway on CPU 0; wrk, the
generator and the upstream nginx on CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.__main__ import (
    HERE,
    ROOT,
    Rss,
    cpu_seconds,
    ensure_tools,
    free_port,
    pinned,
    setup_gateway,
    start_nginx,
    tree_cpu_seconds,
    upstream_server,
    wait_port,
    write_results,
    wrk,
)

# setup_gateway mints the session token and the request tokens for 15 minutes: the run,
# started within a minute of minting, must end before they expire.
MAX_MINUTES = 13.0
KINDS = ("allowed", "session", "token")
# A point of the run: seconds since the start, answers so far (per kind, then all of them,
# the lengths of Generator's arrays), the gateway's CPU seconds, and each CPU's busy and
# total seconds (cpu_times).
Mark = tuple[float, list[int], float, list[tuple[float, float]]]
TIMEOUT = 10.0  # seconds for one request before it counts as a socket error
BODY = b'{"amount":5}'

# wrk's requests for the maximum: the same mix in the same order; each request token once
# (when the list runs out, allowed requests take the tokens' turns).
MIX_LUA = """
local tokens, n, t, i = {}, 0, 0, 0
local auth = os.getenv("SOAK_AUTH")
local session = os.getenv("SOAK_SESSION")
for line in io.lines(os.getenv("SOAK_TOKENS")) do n = n + 1; tokens[n] = line end
request = function()
  i = i + 1
  local k = i % 3
  if k == 1 then return wrk.format("GET", "/public/x") end
  if k == 2 then
    return wrk.format("GET", "/session/a", {["Authorization"] = auth,
                                             ["X-Stepgate-Token"] = session})
  end
  t = t + 1
  if t > n then return wrk.format("GET", "/public/x") end
  return wrk.format("POST", "/pay", {["Authorization"] = auth, ["X-Stepgate-Token"] = tokens[t],
                                      ["Content-Type"] = "application/json"}, '{"amount":5}')
end
"""


def minutes(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_MINUTES:
        raise argparse.ArgumentTypeError(
            f"{text}: between 0 and {MAX_MINUTES:g} minutes (the bench's tokens live 15 minutes)")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a fraction of the maximum, in (0, 1]")
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench soak",
                                description="Drive the mix at a fraction of its maximum rate "
                                "for minutes; sample the gateway's RSS and open files.")
    p.add_argument("--minutes", type=minutes, default=10.0,
                   help=f"length of the paced run (fractions allowed, at most {MAX_MINUTES:g})")
    p.add_argument("--fraction", type=fraction, default=0.5,
                   help="share of the measured maximum rate to send")
    p.add_argument("--probe-seconds", type=float, default=5.0,
                   help="wrk run measuring the mix's maximum rate")
    p.add_argument("--connections", type=int, default=32,
                   help="connections of wrk and of the paced generator")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--no-install", action="store_true", help="never apt-get missing tools")
    return p.parse_args(argv)


def start_gateway(gd: Path, keys: dict[str, str]) -> subprocess.Popen[bytes]:
    """The gateway of ``gd/config.yaml`` on CPU 0, its output in ``gd/gateway.log``."""
    with open(gd / "gateway.log", "ab") as log:
        return subprocess.Popen(pinned([sys.executable, "-m", "gateway", "run", "--config",
                                        str(gd / "config.yaml")], 0), cwd=ROOT,
                                env=dict(os.environ, **keys), stdout=log,
                                stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def token_values(tsv: Path, out: Path) -> Path:
    """The token column of setup_gateway's request list, one a line (for wrk's script)."""
    with open(tsv) as src, open(out, "w") as dst:
        for line in src:
            if line.strip():
                dst.write(line.split("\t")[4] + "\n")
    return out


def probe(d: Path, upstream: int, args: argparse.Namespace) -> dict[str, Any]:
    """The mix's maximum rate: wrk with ``args.connections`` connections for
    ``args.probe_seconds`` against a gateway of its own, stopped afterwards."""
    d.mkdir()
    port = free_port()
    n_tokens = max(1000, math.ceil(6000 * args.probe_seconds))  # mix up to ~18,000 req/s
    keys, data = setup_gateway(d, upstream, port, n_tokens, 0)
    proc = start_gateway(d, keys)
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        wrk(f"{base}/public/x", seconds=1, connections=args.connections)  # warm up
        script = d / "mix.lua"
        script.write_text(MIX_LUA)
        env = dict(os.environ, SOAK_AUTH=data["auth"], SOAK_SESSION=data["session"],
                   SOAK_TOKENS=str(token_values(data["tokens"][0], d / "tokens.txt")))
        row = wrk(f"{base}/", seconds=args.probe_seconds, connections=args.connections,
                  script=script, env=env)
        row["seconds"] = max(1, round(args.probe_seconds))
        row["connections"] = args.connections
        row["tokens_ran_out"] = row["requests"] // 3 > n_tokens
        if proc.poll() is not None:
            raise SystemExit(f"bench soak: the gateway exited while measuring the maximum:\n"
                             f"{(d / 'gateway.log').read_text()[-2000:]}")
        return row
    finally:
        stop(proc)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_times() -> list[tuple[float, float]]:
    """Per CPU of the machine, seconds busy (anything but idle and I/O wait) and seconds in
    all since boot: what else ran beside the gateway on CPU 0 shows against its own time."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:9]]
                out.append(((sum(v) - v[3] - v[4]) / tick, sum(v) / tick))
    return out


def busy(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    """Each CPU's busy share between two cpu_times readings."""
    return [round((y[0] - x[0]) / max(1e-9, y[1] - x[1]), 3) for x, y in zip(a, b)]


class Generator:
    """Open-loop, paced: request ``i`` is due at ``start + i / rate``, whatever the answers
    to the earlier ones; ``connections`` keep-alive connections each take the next due
    request when free. Latency runs from writing the request to the end of its answer. The
    lag from the due time to the write (the loop's timers tick in milliseconds; a request
    waits while every connection is busy) is kept too, and so is the latency counted from
    the due time, where a gateway falling behind shows in full (no coordinated omission).
    HTTP/1.1 by hand on asyncio streams, so the generator does not compete with what it
    measures."""

    def __init__(self, port: int, auth: str, session: str, tokens: IO[str], rate: float,
                 seconds: float, connections: int) -> None:
        self.port, self.rate, self.seconds, self.connections = port, rate, seconds, connections
        self.tokens = tokens
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        self.allowed = b"GET /public/x HTTP/1.1\r\n" + host + b"\r\n"
        self.session = (b"GET /session/a HTTP/1.1\r\n" + host +
                        f"Authorization: {auth}\r\nX-Stepgate-Token: {session}\r\n\r\n".encode())
        self.pay = (b"POST /pay HTTP/1.1\r\n" + host + f"Authorization: {auth}\r\n".encode() +
                    b"Content-Type: application/json\r\nContent-Length: " +
                    str(len(BODY)).encode() + b"\r\nX-Stepgate-Token: ")
        self.next = 0
        self.latencies = {k: array("d") for k in KINDS}  # from the write to the answer
        self.lag = array("d")  # from the due time to the write
        self.from_due = array("d")  # from the due time to the answer
        self.statuses: Counter[int] = Counter()
        self.socket_errors: Counter[str] = Counter()
        self.tokens_short = 0

    def request(self, i: int) -> tuple[str, bytes]:
        k = i % 3
        if k == 0:
            return "allowed", self.allowed
        if k == 1:
            return "session", self.session
        line = self.tokens.readline()
        if not line:
            self.tokens_short += 1
            return "allowed", self.allowed
        return "token", self.pay + line.split("\t")[4].encode() + b"\r\n\r\n" + BODY

    async def worker(self, start: float) -> None:
        clock = time.perf_counter
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        end = start + self.seconds
        while True:
            i = self.next
            due = start + i / self.rate
            if due >= end:
                break
            self.next += 1
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, raw = self.request(i)
            sent = clock()
            self.lag.append(max(0.0, sent - due) * 1000)  # a timer may fire a little early
            try:
                async with asyncio.timeout(TIMEOUT):
                    if reader is None or writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    status, keep = await exchange(reader, writer, raw)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError) as exc:
                self.socket_errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            answered = clock()
            self.latencies[kind].append((answered - sent) * 1000)
            self.from_due.append((answered - min(due, sent)) * 1000)
            self.statuses[status] += 1
            if not keep:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def run(self, sample: Callable[[float], None]) -> float:
        """Send the whole schedule, calling ``sample`` every second; the seconds taken."""
        clock = time.perf_counter
        start = clock() + 0.05
        workers = [asyncio.create_task(self.worker(start)) for _ in range(self.connections)]

        async def sampler() -> None:
            k = 0
            while True:
                k += 1
                await asyncio.sleep(max(0.0, start + k - clock()))
                sample(clock() - start)
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*workers)
        elapsed = clock() - start
        sampling.cancel()
        return elapsed


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   raw: bytes) -> tuple[int, bool]:
    """One request and its whole response on a keep-alive connection: the status, and
    whether the connection may carry the next one."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep = b"\r\nconnection: close" not in lower
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        n = int(lower[i + 17:lower.index(b"\r\n", i + 2)])
        if n:
            await reader.readexactly(n)
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status >= 200 and status not in (204, 304):
        await reader.read()
        keep = False
    return status, keep


def drive(port: int, data: dict[str, Any], rate: float, seconds: float, connections: int,
          pid: int, upstream_pid: int) -> dict[str, Any]:
    """The paced run, with the gateway's RSS and open files sampled every second."""
    import uvloop

    samples: list[dict[str, float]] = []
    marks: list[Mark] = []
    gen: Generator

    def mark(t: float) -> None:
        marks.append((t, [*(len(gen.latencies[k]) for k in KINDS), len(gen.from_due)],
                      cpu_seconds(pid) - cpu0, cpu_times()))

    def sample(t: float) -> None:
        try:
            rss, n = Rss(pid).read() / 1e6, fds(pid)
            mark(t)
        except OSError:  # the gateway is gone: the errors will say so
            return
        samples.append({"t": round(t, 1), "rss_mb": round(rss, 2), "fds": n,
                        "answered": marks[-1][1][-1], "gateway_cpu_s": round(marks[-1][2], 3)})

    before = {"rss_mb": round(Rss(pid).read() / 1e6, 2), "fds": fds(pid)}
    cpu0, up0, own0 = cpu_seconds(pid), tree_cpu_seconds(upstream_pid), time.process_time()
    with open(data["tokens"][0]) as tokens:
        gen = Generator(port, data["auth"], data["session"], tokens, rate, seconds, connections)
        marks.append((0.0, [0, 0, 0, 0], 0.0, cpu_times()))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            elapsed = runner.run(gen.run(sample))
        with contextlib.suppress(OSError):
            mark(elapsed)
    sent = gen.next
    gateway_cpu = cpu_seconds(pid) - cpu0
    upstream_cpu = tree_cpu_seconds(upstream_pid) - up0
    own_cpu = time.process_time() - own0
    time.sleep(2)  # the generator's connections closed; the gateway at rest
    try:
        idle = {"rss_mb": round(Rss(pid).read() / 1e6, 2), "fds": fds(pid)}
    except OSError:
        idle = {}
    every = sorted(x for v in gen.latencies.values() for x in v)
    by_kind = {}
    for kind in KINDS:
        ordered = sorted(gen.latencies[kind])
        by_kind[kind] = {"answered": len(ordered), "p50_ms": percentile(ordered, 0.5),
                         "p99_ms": percentile(ordered, 0.99)}
    bad = {str(s): n for s, n in sorted(gen.statuses.items()) if not 200 <= s < 300}
    lag, due = sorted(gen.lag), sorted(gen.from_due)
    return {
        "sent": sent, "answered": len(every), "achieved_rps": round(sent / elapsed, 1),
        "elapsed_s": round(elapsed, 2),
        "errors": sum(bad.values()) + sum(gen.socket_errors.values()),
        "non_2xx": bad, "socket_errors": dict(gen.socket_errors),
        "p50_ms": percentile(every, 0.5), "p99_ms": percentile(every, 0.99),
        "max_ms": round(every[-1], 3) if every else float("nan"),
        "from_due_p50_ms": percentile(due, 0.5), "from_due_p99_ms": percentile(due, 0.99),
        "send_lag_p50_ms": percentile(lag, 0.5), "send_lag_p99_ms": percentile(lag, 0.99),
        "by_kind": by_kind, "tokens_short": gen.tokens_short,
        "gateway_cpu_us_per_req": round(gateway_cpu * 1e6 / max(1, sent), 1),
        "gateway_cpu_share": round(gateway_cpu / elapsed, 3),
        "generator_cpu_share": round(own_cpu / elapsed, 3),
        "upstream_cpu_share": round(upstream_cpu / elapsed, 3),
        "cpu_busy": busy(marks[0][3], marks[-1][3]),
        "after_warmup": after_warmup(gen, marks, warmup(seconds)),
        "before": before, "idle_after": idle,
        "windows": windows(gen, marks, samples, seconds), "samples": samples,
    }


def warmup(seconds: float) -> float:
    """The warm-up: the first minute, or the first 10 % of the run when that is shorter."""
    return min(60.0, 0.1 * seconds)


def after_warmup(gen: Generator, marks: list[Mark], warm: float) -> dict[str, Any]:
    """Latency of the requests answered after the warm-up."""
    start = next((m for m in marks if m[0] >= warm), marks[-1])
    lat = sorted(x for k, kind in enumerate(KINDS) for x in gen.latencies[kind][start[1][k]:])
    due = sorted(gen.from_due[start[1][-1]:])
    return {"from_s": round(start[0], 1), "answered": len(lat), "p50_ms": percentile(lat, 0.5),
            "p99_ms": percentile(lat, 0.99), "from_due_p99_ms": percentile(due, 0.99)}


def windows(gen: Generator, marks: list[Mark],
            samples: list[dict[str, float]], seconds: float) -> list[dict[str, Any]]:
    """The run in windows of a minute (of half the run when it is shorter than two minutes):
    answers per second, latency (also from the due time), the gateway's CPU per request and
    share of CPU 0, how busy CPU 0 was in all, and the gateway's RSS at the window's end; a
    drift over the run shows here, and so does other work on the machine."""
    width = min(60.0, seconds / 2)
    cuts = [marks[0]]
    for m in marks[1:-1]:
        if m[0] >= cuts[-1][0] + width - 0.5:
            cuts.append(m)
    # the last mark closes the last window; a stub of less than half a window joins it
    if len(cuts) > 1 and marks[-1][0] - cuts[-1][0] < width / 2:
        cuts[-1] = marks[-1]
    elif marks[-1] is not cuts[-1]:
        cuts.append(marks[-1])
    out = []
    for a, b in zip(cuts, cuts[1:]):
        lat = sorted(x for k, kind in enumerate(KINDS)
                     for x in gen.latencies[kind][a[1][k]:b[1][k]])
        n = len(lat)
        if not n or b[0] <= a[0]:
            continue
        rss = [s["rss_mb"] for s in samples if s["t"] <= b[0] + 0.05]
        due = sorted(gen.from_due[a[1][-1]:b[1][-1]])
        out.append({"from_s": round(a[0]), "to_s": round(b[0]), "answered": n,
                    "rps": round(n / (b[0] - a[0]), 1),
                    "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
                    "from_due_p99_ms": percentile(due, 0.99),
                    "gateway_cpu_us_per_req": round((b[2] - a[2]) * 1e6 / n, 1),
                    "gateway_cpu_share": round((b[2] - a[2]) / (b[0] - a[0]), 3),
                    "cpu0_busy": busy(a[3], b[3])[0],
                    "rss_mb": rss[-1] if rss else None})
    return out


def memory(load: dict[str, Any], seconds: float) -> dict[str, Any]:
    """RSS and open files: when the load began, after the warm-up (the first minute, or the
    first 10 % of the run when that is shorter), their maximum after it, at the end (the last
    sample under load) and two seconds after the load stopped."""
    warm = warmup(seconds)
    samples = load["samples"]
    after = [s for s in samples if s["t"] >= warm] or samples[-1:]
    out: dict[str, Any] = {"warmup_s": round(warm, 1),
                           "warmup_rule": "the first minute, or the first 10 % of the run when "
                                          "that is shorter"}
    for key in ("rss_mb", "fds"):
        values = [s[key] for s in after]
        out[key] = {"start": load["before"][key], "after_warmup": values[0],
                    "max": max(values), "end": values[-1],
                    "idle_after": load["idle_after"].get(key)}
    rss = out["rss_mb"]
    rss["growth_after_warmup"] = round(rss["end"] - rss["after_warmup"], 2)
    rss["max_growth_after_warmup"] = round(rss["max"] - rss["after_warmup"], 2)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.no_install:
        ensure_tools()
    seconds = args.minutes * 60
    d = Path(tempfile.mkdtemp(prefix="stepgate-soak-"))
    d.chmod(0o755)  # nginx workers run unprivileged
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {
        "kind": "soak", "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "minutes": args.minutes, "fraction": args.fraction,
        "mix": {"allowed": "GET /public/x", "session": "GET /session/a (session token)",
                "token": "POST /pay (pre-minted request token, each used once)",
                "share": "one in three each, in turn"},
        "store": "sqlite"}
    try:
        files = d / "files"
        files.mkdir()
        up = free_port()
        procs.append(start_nginx(d, "upstream", upstream_server(up, files), 1))
        wait_port(up)
        results["probe"] = probe(d / "probe", up, args)
        rate = max(3.0, round(args.fraction * results["probe"]["rps"]))
        results["rate"] = rate
        gd = d / "soak"
        gd.mkdir()
        port = free_port()
        n_tokens = math.ceil(rate * seconds / 3) + 100
        keys, data = setup_gateway(gd, up, port, n_tokens, 0)
        results["tokens_minted"] = n_tokens
        proc = start_gateway(gd, keys)
        procs.append(proc)
        wait_port(port)
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})  # the generator beside wrk's usual place
        load = drive(port, data, rate, seconds, args.connections, proc.pid, procs[0].pid)
        results["gateway_alive"] = proc.poll() is None
        results["store_mb"] = round(sum(f.stat().st_size for f in gd.glob("stepgate.db*")) / 1e6,
                                    1)
        if not results["gateway_alive"]:
            load["gateway_log"] = (gd / "gateway.log").read_text(errors="replace")[-2000:]
        results.update(memory(load, seconds))
        results["load"] = load
        return results
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(d, ignore_errors=True)


def report(r: dict[str, Any]) -> str:
    load, probe_row, rss, fd = r["load"], r["probe"], r["rss_mb"], r["fds"]
    lines = [
        f"soak: {r['minutes']:g} min at {r['rate']:,.0f} req/s "
        f"({r['fraction']:g} of the mix's {probe_row['rps']:,.0f} req/s measured by wrk for "
        f"{probe_row['seconds']} s, {probe_row['errors']} errors); one in three each allowed, "
        "session token, request token",
        "",
        f"{'requests sent':<28}{load['sent']:>12,}   ({load['achieved_rps']:,.0f} req/s, "
        f"{load['answered']:,} answered)",
        f"{'errors':<28}{load['errors']:>12}   (target 0; non-2xx {load['non_2xx'] or '{}'}, "
        f"socket {load['socket_errors'] or '{}'})",
        f"{'latency p50 / p99 ms':<28}{load['p50_ms']:>12.3f} / {load['p99_ms']:.3f}   "
        f"(max {load['max_ms']:.1f})",
    ]
    for kind, row in load["by_kind"].items():
        lines.append(f"{'  ' + kind:<28}{row['p50_ms']:>12.3f} / {row['p99_ms']:.3f}   "
                     f"({row['answered']:,} answered)")
    warm = load["after_warmup"]
    lines.append(f"{'  after the warm-up':<28}{warm['p50_ms']:>12.3f} / {warm['p99_ms']:.3f}   "
                 f"({warm['answered']:,} answered from {warm['from_s']:g} s)")
    lines.append(f"{'  from the due time':<28}{load['from_due_p50_ms']:>12.3f} / "
                 f"{load['from_due_p99_ms']:.3f}   (after the warm-up p99 "
                 f"{warm['from_due_p99_ms']:.3f}; sent late by p50 {load['send_lag_p50_ms']:.3f}, "
                 f"p99 {load['send_lag_p99_ms']:.3f})")
    lines += [
        "",
        f"{'':<28}{'start':>10}{'warmed':>10}{'max':>10}{'end':>10}{'at rest':>10}",
        f"{'gateway RSS MB':<28}{rss['start']:>10.1f}{rss['after_warmup']:>10.1f}"
        f"{rss['max']:>10.1f}{rss['end']:>10.1f}{rss['idle_after'] or 0:>10.1f}",
        f"{'gateway open fds':<28}{fd['start']:>10}{fd['after_warmup']:>10}{fd['max']:>10}"
        f"{fd['end']:>10}{fd['idle_after'] or 0:>10}",
        f"RSS growth after the warm-up (first {r['warmup_s']:g} s): "
        f"{rss['growth_after_warmup']:+.2f} MB at the end, {rss['max_growth_after_warmup']:+.2f} MB "
        "at most (target < 10 MB)",
        f"gateway CPU {load['gateway_cpu_us_per_req']:.1f} us/req, {load['gateway_cpu_share']:.0%} "
        f"of CPU 0 (busy {load['cpu_busy'][0]:.0%} in all); on CPU 1 the generator used "
        f"{load['generator_cpu_share']:.0%} and the upstream {load['upstream_cpu_share']:.0%} "
        f"(busy {load['cpu_busy'][-1]:.0%} in all)",
    ]
    lines += ["", f"{'window s':<12}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'due p99':>10}"
                  f"{'us/req':>8}{'gw CPU0':>9}{'CPU0':>7}{'RSS MB':>9}"]
    for w in load["windows"]:
        lines.append(f"{str(w['from_s']) + '-' + str(w['to_s']):<12}{w['rps']:>8.0f}"
                     f"{w['p50_ms']:>9.3f}{w['p99_ms']:>9.3f}{w['from_due_p99_ms']:>10.3f}"
                     f"{w['gateway_cpu_us_per_req']:>8.0f}{w['gateway_cpu_share']:>9.0%}"
                     f"{w['cpu0_busy']:>7.0%}{w['rss_mb'] or 0:>9.1f}")
    lines.append(f"store (SQLite file and WAL) at the end: {r['store_mb']} MB, "
                 f"{r['tokens_minted']:,} request tokens minted")
    if not r.get("gateway_alive", True):
        lines.append("THE GATEWAY EXITED DURING THE RUN")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse(argv)
    write_results(run(args), report, Path(args.out), "-soak")
