"""Fixtures: real processes on loopback, key material, configuration files."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from gateway.keys import generate_data_key, generate_signing_key

HERE = Path(__file__).parent
ROOT = HERE.parent
SIGNING = generate_signing_key()
DATA = generate_data_key()
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter"]
PASSWORD = "correct horse"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {out[-2000:]}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Upstream:
    def __init__(self, port: int, log: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = proc

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def clear(self) -> None:
        self.log.write_text("")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    d = tmp_path_factory.mktemp("upstream")
    port = free_port()
    log = d / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, str(HERE / "recording_upstream.py"), str(port),
                             str(log)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_ready(proc, f"http://127.0.0.1:{port}/ready")
    yield Upstream(port, log, proc)
    stop(proc)


@pytest.fixture(scope="session")
def htpasswd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.htpasswd"
    salt = bcrypt.gensalt(rounds=4)
    path.write_text("".join(f"{u}:{bcrypt.hashpw(PASSWORD.encode(), salt).decode()}\n"
                            for u in USERS))
    return path


E2E_RULES = {
    "rules": [
        {"name": "public", "match": {"paths": ["/public/**"]}, "action": "allow"},
        {"name": "admin", "match": {"paths": ["/admin/**"]}, "action": "deny"},
        {"name": "transfers", "match": {"methods": ["POST"], "paths": ["/accounts/{id}/transfers"]},
         "require": {"factors": ["totp", "recovery"], "binding": "request"}},
        {"name": "big-payments",
         "match": {"methods": ["POST"], "paths": ["/payments"], "json": {"$.amount": {"gt": 1000}}},
         "require": {"factors": ["totp", "recovery"], "binding": "request"}},
        {"name": "payments", "match": {"methods": ["POST"], "paths": ["/payments"]}, "action": "allow"},
        {"name": "flaky", "match": {"paths": ["/status/**"]},
         "require": {"factors": ["totp", "recovery"], "binding": "route", "uses": 1}},
        {"name": "settings", "match": {"paths": ["/settings/**"]},
         "require": {"factors": ["totp", "recovery"], "binding": "session", "scope": "settings",
                     "ttl": "5m"}},
        {"name": "optin", "match": {"paths": ["/optin/**"]},
         "require": {"factors": ["totp"], "unenrolled": "allow"}},
        {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"},
    ]
}


def write_config(d: Path, upstream_url: str, htpasswd: Path, *, port: int,
                 rules: dict[str, Any] | None = None, **overrides: Any) -> Path:
    (d / "policies").mkdir(exist_ok=True)
    (d / "policies" / "rules.yaml").write_text(yaml.safe_dump(rules or E2E_RULES))
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"url": upstream_url, "connect_timeout": "1s", "read_timeout": "1s"},
        "realm": "test-api",
        "policies": "policies/",
        "default_action": "deny",
        "store": "sqlite:///state/stepgate.db",
        "identity": {"basic": {"htpasswd": str(htpasswd)}},
        "audit": {"path": "audit.jsonl"},
        "factors": {"totp": {"issuer": "Test Bank"}},
    }
    cfg.update(overrides)
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class GatewayProcess:
    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = env or {}

    def start(self) -> GatewayProcess:
        env = dict(os.environ, STEPGATE_KEYS=SIGNING, STEPGATE_DATA_KEYS=DATA, **self.env)
        # The server's output goes to a file beside its config: a pipe nobody reads could
        # fill up and stall it, and the file is there to read when a test fails.
        self.log = open(self.config.parent / "gateway.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                      str(self.config)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_ready(self.proc, f"{self.url}/.stepgate/config")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.output}") from None
        return self

    @property
    def output(self) -> str:
        path = self.config.parent / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> str:
        assert self.proc is not None
        stop(self.proc)
        self.log.close()
        self.proc = None
        return self.output

    @property
    def audit(self) -> str:
        path = self.config.parent / "audit.jsonl"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="session")
def make_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
                 htpasswd: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def factory(rules: dict[str, Any] | None = None, upstream_url: str | None = None,
                env: dict[str, str] | None = None, **overrides: Any) -> GatewayProcess:
        d = tmp_path_factory.mktemp("gateway")
        port = free_port()
        cfg = write_config(d, upstream_url or upstream.url, htpasswd, port=port, rules=rules,
                           **overrides)
        gw = GatewayProcess(cfg, port, env).start()
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        if gw.proc is not None:
            gw.stop()


@pytest.fixture(scope="session")
def gateway(make_gateway: Any) -> GatewayProcess:
    return make_gateway()
