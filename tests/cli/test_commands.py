"""The command as a package: the same commands and entry points as before, the demo
upstream beside them."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiohttp.test_utils import TestClient, TestServer

import gateway.cli
from gateway.cli import main, parser
from gateway.cli.demo import make_app

from ..conftest import ROOT


def test_entry_points() -> None:
    assert main is gateway.cli.main  # pyproject: stepgate = "gateway.cli:main"
    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"audit", "check", "demo", "demo-upstream", "explain", "keys", "run", "schema",
            "store", "users"} <= set(commands)


def test_python_dash_m_gateway() -> None:
    r = subprocess.run([sys.executable, "-m", "gateway", "schema", "config"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '"$schema": "https://json-schema.org/draft/2020-12/schema"' in r.stdout


def test_unknown_schema_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["schema", "rules"])
    assert exit.value.code == 2
    assert "choose from 'config', 'policies'" in capsys.readouterr().err


def test_demo_upstream_app() -> None:
    async def go() -> tuple[int, object]:
        async with TestClient(TestServer(make_app())) as client:
            r = await client.get("/public/hello")
            return r.status, await r.json()
    assert asyncio.run(go()) == (200, {"hello": "world"})
