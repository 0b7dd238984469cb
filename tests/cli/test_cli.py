"""The `stepgate` command as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.cli.common import small_config

from ..conftest import DATA, ROOT, SIGNING

ENV = dict(os.environ, STEPGATE_KEYS=SIGNING, STEPGATE_DATA_KEYS=DATA)


def stepgate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=60)




def test_check_example_config() -> None:
    r = stepgate("check", "--config", "config.example.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: config.example.yaml: 7 rules (3 allow, 1 deny, 3 require)")


def test_check_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "a", "match": {"paths": ["/x"]}, "require": {"factors": ["totp"], "binding": "sesion"}},
        {"name": "b", "match": {"paths": ["nope"]}, "action": "allow"}]}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "upstream": {"url": "http://127.0.0.1:1", "read_timeout": "forever"},
        "policies": "p.yaml", "identity": {"basic": {"verify": "backend"}}}))
    r = stepgate("check", "--config", str(tmp_path / "c.yaml"))
    assert r.returncode == 2
    assert "3 problem(s)" in r.stderr
    assert "upstream.read_timeout: expected a duration like '30s', '2m' or '1h', found 'forever'" in r.stderr
    # each names the policy file and the rule (the wording is tests/config's to pin down)
    assert "rule #1 ('a'): require.binding: expected one of 'request', 'route', 'session', found 'sesion'" in r.stderr
    assert "rule #2 ('b'): match.paths:" in r.stderr
    assert r.stderr.count("p.yaml") == 2


def test_explain() -> None:
    r = stepgate("explain", "--config", "config.example.yaml", "POST", "/accounts/1/transactions")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("  skip  rule #1 ('public') in policies/10-bank.yaml: path "
                        "/accounts/1/transactions matches none of /public/**")
    assert lines[-1] == ("=> rule #6 ('transactions') in policies/10-bank.yaml matches: require "
                         "totp or recovery (binding request, ttl 120s)")
    big = stepgate("explain", "--config", "config.example.yaml", "POST", "/accounts/1/transfers",
                   "--json", '{"amount": 5000}')
    assert "('large-transfers')" in big.stdout.splitlines()[-1]
    small = stepgate("explain", "--config", "config.example.yaml", "POST", "/accounts/1/transfers",
                     "--json", '{"amount": 5}')
    assert "('small-transfers')" in small.stdout.splitlines()[-1]
    bad = stepgate("explain", "--config", "config.example.yaml", "GET", "/public/../internal")
    assert bad.returncode == 1 and "rejected with 400" in bad.stdout
    none = stepgate("explain", "--config", "config.example.yaml", "GET", "/nothing")
    assert none.stdout.splitlines()[-1] == "=> no rule matches; default_action: deny"


def test_keys_generate() -> None:
    r = stepgate("keys", "generate")
    assert r.returncode == 0
    env = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert len(env["STEPGATE_KEYS"]) >= 32
    from gateway.keys import KeyRing
    KeyRing([env["STEPGATE_KEYS"]], [env["STEPGATE_DATA_KEYS"]])


def test_users_commands(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    enrol = stepgate("users", "--config", str(cfg), "enrol-totp", "zoe")
    assert enrol.returncode == 0, enrol.stderr
    uri = next(line for line in enrol.stdout.splitlines() if line.startswith("otpauth://"))
    assert "zoe" in uri and "secret=" in uri
    assert "\u2588" in enrol.stdout or "\u2580" in enrol.stdout  # a terminal QR code
    shown = json.loads(stepgate("users", "--config", str(cfg), "show", "zoe").stdout)
    assert [f["status"] for f in shown["factors"]] == ["active"]
    assert stepgate("users", "--config", str(cfg), "unlock", "zoe").returncode == 0
    assert "removed 1" in stepgate("users", "--config", str(cfg), "reset", "zoe", "--yes").stdout
    gone = stepgate("users", "--config", str(cfg), "show", "zoe")
    assert gone.returncode == 1 and "no user 'zoe'" in gone.stderr


def test_run_without_keys_fails_clearly(tmp_path: Path) -> None:
    """The demo configuration outside the repository, without its keys file or variables."""
    doc = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    doc["policies"] = str(ROOT / "policies")
    doc["identity"]["basic"]["htpasswd"] = str(ROOT / "demo" / "users.htpasswd")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in ENV.items() if k not in ("STEPGATE_KEYS", "STEPGATE_DATA_KEYS")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", "c.yaml"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert ("c.yaml: keys.file: expected a readable file of keys (or environment variable "
            "STEPGATE_KEYS, which is unset or empty), found No such file or directory at "
            f"{tmp_path / 'stepgate-demo.keys'}") in r.stderr
    assert ("to create stepgate-demo.keys: stepgate keys generate --output stepgate-demo.keys"
            in r.stderr)


def test_audit_command_reads_the_store(tmp_path: Path) -> None:
    import asyncio

    from gateway.store import open_store
    cfg = small_config(tmp_path)

    async def seed() -> None:
        store = open_store(f"sqlite:///{tmp_path}/s.db")
        await store.open()
        for ts, user in [(100.0, "a"), (200.0, "b"), (300.0, "a")]:
            await store.append_audit([{"ts": ts, "event": "failed", "user": user}])
        await store.close()
    asyncio.run(seed())
    r = stepgate("audit", "--config", str(cfg), "--user", "a", "--since", "150", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["ts"] for line in r.stdout.splitlines()] == [300.0]
    bad = stepgate("audit", "--config", str(cfg), "--since", "yesterday")
    assert bad.returncode == 2 and "--since: expected epoch seconds or ISO 8601" in bad.stderr


def test_multi_worker_run_serves(tmp_path: Path) -> None:
    import socket
    import time

    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "a", "match": {"paths": ["/x"]}, "action": "deny"}]}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"upstream": {"url": "http://127.0.0.1:1"}, "policies": "p.yaml",
                                   "store": "sqlite:///s.db", "listen": f"127.0.0.1:{port}",
                                   "audit": {"path": "audit.jsonl"}}))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg),
                             "--workers", "2"], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/x", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 403
    finally:
        proc.terminate()
        proc.wait(15)
