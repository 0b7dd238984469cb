"""GET {prefix}/health and {prefix}/ready in-process: no credentials, the contract of
docs/operations.md, and a readiness answer probes cannot use to load the store."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MakeApp

pytestmark = pytest.mark.anyio
P = "/.stepgate"


async def test_health_and_ready_need_no_credentials(make_app: MakeApp) -> None:
    async with make_app() as (_, client):
        anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://gw.test")
        h = await anonymous.get(f"{P}/health")
        assert h.status_code == 200 and h.json() == {"status": "serving"}
        r = await anonymous.get(f"{P}/ready")
        assert r.status_code == 200 and r.json() == {"status": "ready", "rules": 1}
        assert r.headers["cache-control"] == "no-store"


async def test_ready_names_every_part_that_is_down(make_app: MakeApp,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_app() as (app, client):
        calls = []

        async def down() -> list[str]:
            calls.append(1)
            return ["store: PostgreSQL does not answer (timed out)", "redis: does not answer"]
        monkeypatch.setattr(app.store, "ready", down)
        r = await client.get(f"{P}/ready")
        assert r.status_code == 503
        doc = r.json()
        assert doc["type"] == "urn:stepgate:problem:not-ready"
        assert doc["down"] == ["store: PostgreSQL does not answer (timed out)",
                               "redis: does not answer"]
        assert "redis: does not answer" in doc["detail"]
        assert r.headers["retry-after"] == "5"
        # Remembered for a second: a probe storm costs the store one check.
        for _ in range(20):
            assert (await client.get(f"{P}/ready")).status_code == 503
        assert len(calls) == 1
        # Health is about the process, not its store.
        assert (await client.get(f"{P}/health")).status_code == 200
