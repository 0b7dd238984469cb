"""What the contract suite cannot say about the PostgreSQL backend: its URL, replicas
creating one store together, lost stores, passwords from files, and a server that stops
answering or goes away (real server, tests/servers.py)."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.store import FactorRecord, Store, StoreMissing, StoreUnavailable, open_store
from gateway.store.postgresql import MIGRATIONS, PostgresStore, parse_url
from tests.servers import postgres

pytestmark = pytest.mark.anyio


_numbers = itertools.count(1)


def database(name: str) -> tuple[str, str]:
    """A new database (its name and URL); names are unique per test process."""
    name = f"{name}_{next(_numbers)}"
    return name, postgres().new_database(name)


# ---------------------------------------------------------------- the URL

@pytest.mark.parametrize(("url", "dsn", "pool"), [
    ("postgresql://u@h/db", "postgresql://u@h/db", (1, 10)),
    ("postgresql://u@h:5/db?pool_min=0&pool_max=3&sslmode=verify-full",
     "postgresql://u@h:5/db?sslmode=verify-full", (0, 3)),
    ("postgresql://u@h/db?password_env=PW&search_path=stepgate",
     "postgresql://u@h/db?search_path=stepgate", (1, 10)),
    ("postgresql://u@h/db?password_file=%2Frun%2Fpw&pool_max=1", "postgresql://u@h/db",
     (1, 1)),
])
def test_the_store_s_own_parameters_are_taken_off_the_url(url: str, dsn: str,
                                                           pool: tuple[int, int]) -> None:
    target = parse_url(url)
    assert (target.dsn, (target.pool_min, target.pool_max)) == (dsn, pool)
    assert (target.password is None) == ("password_" not in url)


@pytest.mark.parametrize(("url", "error"), [
    ("postgresql://u@h/db?pool_max=0", "pool_max must be an integer of at least 1"),
    ("postgresql://u@h/db?pool_min=many", "pool_min must be an integer of at least 0"),
    ("postgresql://u@h/db?pool_min=5&pool_max=2", "pool_min (5) exceeds pool_max (2)"),
    ("postgresql://u:pw@h/db?password_env=PW", "a password in the URL and password_env"),
    ("postgresql://u@h/db?password_env=PW&password_file=/f", "password_env and password_file"),
])
def test_a_bad_parameter_is_named(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        open_store(url)


async def test_the_pool_size_comes_from_the_url() -> None:
    _, url = database("pool")
    s = PostgresStore(url + "?pool_min=2&pool_max=3", 5.0)
    await s.open()
    try:
        assert (s.pool.get_min_size(), s.pool.get_max_size()) == (2, 3)
        counts = await asyncio.gather(*(s.add_failure("u") for _ in range(10)))
        assert sorted(counts) == list(range(1, 11))
        assert s.pool.get_size() <= 3
    finally:
        await s.close()


# ---------------------------------------------------------------- creating and migrating

async def test_stores_opening_one_empty_database_together_create_it_once() -> None:
    # Replicas starting together: the advisory lock makes one create the store and the
    # others wait, then find it. A few rounds, each on a new database.
    for _ in range(5):
        name, url = database("together")
        stores = [open_store(url, timeout=10.0) for _ in range(6)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            assert len({s.instance_id for s in stores}) == 1
        finally:
            for s in stores:
                await s.close()
        versions = postgres().psql(name, "SELECT version FROM schema_version ORDER BY 1")
        assert versions.split() == [str(n) for n in range(1, len(MIGRATIONS) + 1)]
        assert postgres().psql(name, "SELECT count(*) FROM meta").strip() == "1"


async def test_migrations_are_recorded_once() -> None:
    name, url = database("migrations")
    s = open_store(url)
    await s.open()
    first = s.instance_id
    await s.close()
    await s.open()
    await s.open(create=True)
    await s.close()
    rows = postgres().psql(name, "SELECT version, count(*) FROM schema_version GROUP BY 1 "
                                 "ORDER BY 1").split()
    assert rows == [f"{n}|1" for n in range(1, len(MIGRATIONS) + 1)]
    assert s.instance_id == first


async def test_a_new_migration_is_applied_to_an_existing_store_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store.postgresql import connection
    name, url = database("upgrade")
    s = open_store(url)
    await s.open()
    await s.add_failure("u")
    await s.close()
    monkeypatch.setattr(connection, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x int)"])
    stores = [open_store(url, timeout=10.0) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # replicas of the new version at once
    try:
        assert len({x.instance_id for x in stores}) == 1
        assert await stores[0].add_failure("u") == 2
    finally:
        for x in stores:
            await x.close()
    rows = postgres().psql(name, "SELECT version FROM schema_version ORDER BY 1").split()
    assert rows == [str(n) for n in range(1, len(MIGRATIONS) + 2)]
    assert postgres().psql(name, "SELECT count(*) FROM extra").strip() == "0"


async def test_a_store_of_a_newer_version_is_refused() -> None:
    name, url = database("newer")
    s = open_store(url)
    await s.open()
    await s.close()
    postgres().psql(name, f"INSERT INTO schema_version (version) VALUES ({len(MIGRATIONS) + 1})")
    with pytest.raises(StoreUnavailable, match="newer than this gateway knows"):
        await s.open()


@pytest.mark.parametrize("damage", ["DELETE FROM meta", "DROP TABLE factors",
                                    "DROP TABLE schema_version", "DROP TABLE meta",
                                    "DROP TABLE schema_version, meta"])
async def test_a_damaged_store_refuses_to_start_afresh(damage: str) -> None:
    name, url = database("damaged")
    s = open_store(url)
    await s.open()
    first = s.instance_id
    await s.add_factor(FactorRecord("f1", "alice", "totp", "active", "phone", "{}", 1.0))
    await s.replace_recovery_codes("alice", ["h1"], 1.0)
    await s.close()
    postgres().psql(name, damage)
    with pytest.raises(StoreMissing, match=f"database {name} is damaged"):
        await s.open()
    with pytest.raises(StoreUnavailable):
        await s.users()  # a refused store is not left half open
    await s.open(create=True)  # `stepgate store init`: what was left is dropped
    try:
        assert s.instance_id != first
        assert await s.users() == []
    finally:
        await s.close()
    again = open_store(url)
    await again.open()
    assert again.instance_id == s.instance_id
    await again.close()


async def test_a_database_with_other_tables_becomes_a_store() -> None:
    name, url = database("shared")
    postgres().psql(name, "CREATE TABLE unrelated (x int)")
    s = open_store(url + "?search_path=stepgate,public")
    postgres().psql(name, "CREATE SCHEMA stepgate")
    await s.open()
    try:
        assert await s.add_failure("u") == 1
    finally:
        await s.close()
    tables = postgres().psql(name, "SELECT count(*) FROM pg_tables WHERE schemaname = "
                                   "'stepgate'")
    assert int(tables) >= 10


# ---------------------------------------------------------------- passwords

@contextmanager
def password_role(role: str, password: str) -> Iterator[str]:
    """A role that must give its password (scram) on the shared server, which trusts
    every other connection; the URL of a database it owns."""
    server = postgres()
    hba = server.dir / "data" / "pg_hba.conf"
    if not os.access(hba, os.W_OK):
        pytest.skip("cannot change the test server's pg_hba.conf")
    line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    original = hba.read_text()
    server.psql("postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    name, _ = database(role)
    server.psql("postgres", f"ALTER DATABASE {name} OWNER TO {role}")
    hba.write_text(line + original)
    server.psql("postgres", "SELECT pg_reload_conf()")
    _wait_for_password(role, name)
    try:
        yield f"postgresql://{role}@127.0.0.1:{server.port}/{name}"
    finally:
        hba.write_text(original)
        server.psql("postgres", "SELECT pg_reload_conf()")


def _wait_for_password(role: str, name: str) -> None:
    # The postmaster rereads pg_hba.conf when it handles the SIGHUP, a moment later.
    server = postgres()
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run([str(server.bin / "psql"), "-w", "-h", "127.0.0.1", "-p",
                            str(server.port), "-U", role, "-d", name, "-c", "SELECT 1"],
                           capture_output=True, env=env)
        if r.returncode != 0:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not start asking for the password")


async def test_the_password_comes_from_a_file_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    (tmp_path / "pw").write_text("s3cret-Ω\n", encoding="utf-8")
    (tmp_path / "wrong").write_text("nope\n", encoding="utf-8")
    with password_role("stepgate_pw", "s3cret-Ω") as url:
        without = open_store(url, timeout=5.0)
        with pytest.raises(StoreUnavailable):
            await without.open()
        wrong = open_store(f"{url}?password_file={tmp_path / 'wrong'}", timeout=5.0)
        with pytest.raises(StoreUnavailable):
            await wrong.open()
        missing = open_store(f"{url}?password_file={tmp_path / 'absent'}", timeout=5.0)
        with pytest.raises(StoreUnavailable, match="cannot read password_file"):
            await missing.open()
        s = open_store(f"{url}?password_file={tmp_path / 'pw'}", timeout=5.0)
        await s.open()
        assert await s.add_failure("u") == 1
        await s.close()
        monkeypatch.setenv("STEPGATE_TEST_PW", "s3cret-Ω")
        s = open_store(f"{url}?password_env=STEPGATE_TEST_PW", timeout=5.0)
        await s.open()
        assert await s.add_failure("u") == 2
        await s.close()


# ---------------------------------------------------------------- a server that fails

@contextmanager
def frozen() -> Iterator[None]:
    """Every process of the server stopped (SIGSTOP): the postmaster, which accepts new
    connections, and the backends serving the connections already open. The server is
    always let go again, so later tests find it answering."""
    server = postgres()
    server.pause()
    try:
        yield
    finally:
        server.resume()


async def _fails_in_time(call: Awaitable[object], limit: float) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await call
    elapsed = time.monotonic() - started
    assert elapsed < limit
    return elapsed


async def test_a_frozen_server_fails_calls_within_the_timeout_and_recovers() -> None:
    _, url = database("frozen")
    s: Store = open_store(url + "?pool_min=2", timeout=0.5)
    await s.open()
    try:
        assert await s.add_failure("u") == 1
        with frozen():
            for call in (s.add_failure("u"), s.reserve_use("j", 1, 1000.0, 0.0),
                         s.replace_recovery_codes("u", ["h"], 1.0), s.users()):
                await _fails_in_time(call, 1.5)
            started = time.monotonic()
            results = await asyncio.gather(*(s.factors("u") for _ in range(8)),
                                           return_exceptions=True)
            assert all(isinstance(r, StoreUnavailable) for r in results)
            assert time.monotonic() - started < 1.5
        # The same handle, not reopened: the pool drops what broke and reconnects.
        assert await s.add_failure("u") >= 2
        assert await s.reserve_use("j2", 1, 1000.0, 0.0) == "ok"
    finally:
        await s.close()


async def test_a_server_that_accepts_no_connection_fails_opening_within_the_timeout() -> None:
    # Only the postmaster paused: connecting hangs after the TCP handshake.
    _, url = database("paused")
    s = open_store(url, timeout=0.5)
    postgres().pause_main()
    try:
        await _fails_in_time(s.open(), 1.5)
    finally:
        postgres().resume_main()
    await s.open()
    assert await s.add_failure("u") == 1
    await s.close()


async def test_a_stopped_server_fails_calls_and_the_store_recovers_when_it_is_back() -> None:
    _, url = database("stopped")
    s = open_store(url, timeout=2.0)
    await s.open()
    try:
        assert await s.add_failure("u") == 1
        try:
            postgres().stop()
            for call in (s.add_failure("u"), s.generation("u"), s.hit("k", 60, 1.0)):
                await _fails_in_time(call, 2.5)
        finally:
            postgres().start()
        # The same handle, not reopened.
        assert await s.add_failure("u") == 2
        assert await s.hit("k", 60, 1.0) == 1
    finally:
        await s.close()
    closed = open_store(url, timeout=0.5)
    try:
        postgres().stop()
        await _fails_in_time(closed.open(), 1.5)
    finally:
        postgres().start()
