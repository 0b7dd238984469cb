"""Readiness against real stores: a SQLite file deleted or replaced under a running
gateway, and a PostgreSQL or Redis that stops answering, each named by GET {prefix}/ready
within its cache second and the store timeout."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ..conftest import GatewayProcess
from ..servers import postgres, redis

pytestmark = pytest.mark.e2e
P = "/.stepgate"


def ready_after(gw: GatewayProcess, want: int, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{gw.url}{P}/ready", timeout=10)
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_a_deleted_sqlite_file_makes_the_gateway_unready(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway()
    assert ready_after(gw, 200).json()["status"] == "ready"
    db = gw.config.parent / "state" / "stepgate.db"
    kept = db.with_name("kept.db")
    shutil.move(db, kept)
    r = ready_after(gw, 503)
    assert r.status_code == 503
    [down] = r.json()["down"]
    assert down.startswith("store: ") and "missing" in down and str(db) in down
    # Still alive, and still refusing nothing it would not refuse otherwise.
    assert httpx.get(f"{gw.url}{P}/health").status_code == 200
    shutil.move(kept, db)
    assert ready_after(gw, 200).status_code == 200


def test_a_replaced_sqlite_file_makes_the_gateway_unready(
        make_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gw = make_gateway()
    db = gw.config.parent / "state" / "stepgate.db"
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    db.unlink()
    shutil.move(copy, db)  # the same bytes, another file
    r = ready_after(gw, 503)
    assert r.status_code == 503 and "replaced" in r.json()["down"][0]


def test_postgresql_and_redis_are_named_when_they_stop_answering(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(store=postgres().new_database(), redis=redis().url(0),
                      redis_prefix=f"ready-{secrets.token_hex(4)}:", store_timeout="500ms")
    assert ready_after(gw, 200).status_code == 200
    redis().pause()
    try:
        r = ready_after(gw, 503)
        assert r.status_code == 503
        assert [d.split(":")[0] for d in r.json()["down"]] == ["redis"]
    finally:
        redis().resume()
    assert ready_after(gw, 200).status_code == 200
    postgres().pause()
    try:
        r = ready_after(gw, 503)
        assert r.status_code == 503
        assert [d.split(":")[0] for d in r.json()["down"]] == ["store"]
        assert "PostgreSQL" in r.json()["down"][0]
    finally:
        postgres().resume()
    assert ready_after(gw, 200, timeout=10).status_code == 200
