"""``stepgate store migrate`` and ``stepgate store copy``: migrations applied explicitly, and
a deployment's factors and recovery codes moved to another store (SQLite to SQLite, and
SQLite to a real PostgreSQL server), then read back with ``stepgate users show``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml

from gateway.cli import main
from gateway.factors.recovery import code_hash, new_codes
from gateway.factors.totp import TotpFactor, new_secret
from gateway.keys import KeyRing
from gateway.store import Store, open_store
from gateway.store.sqlite import MIGRATIONS

from ..conftest import DATA, SIGNING

KEYS = KeyRing([SIGNING], [DATA])


def config(folder: Path, store: str, name: str = "c.yaml") -> Path:
    (folder / "p.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "a", "match": {"paths": ["/x"]}, "action": "allow"}]}))
    path = folder / name
    path.write_text(yaml.safe_dump({"upstream": {"url": "http://127.0.0.1:1"},
                                    "policies": "p.yaml", "store": store}))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


async def opened(url: str) -> Store:
    store = open_store(url, 10.0)
    await store.open()
    return store


def sqlite_schema(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])


# ---------------------------------------------------------------------------- migrate

def test_migrate_creates_then_finds_nothing_to_do(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, "sqlite:///s.db")
    code, out, _ = run(capsys, "store", "migrate", "--config", str(cfg))
    assert code == 0
    assert out == f"created the store {tmp_path}/s.db at schema version {len(MIGRATIONS)}\n"
    assert sqlite_schema(tmp_path / "s.db") == len(MIGRATIONS)
    code, out, _ = run(capsys, "store", "migrate", "--config", str(cfg))
    assert code == 0
    assert out == (f"the store {tmp_path}/s.db is at schema version {len(MIGRATIONS)}: nothing "
                   "to migrate\n")


def test_migrate_an_older_schema_with_progress(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.commit()
    cfg = config(tmp_path, "sqlite:///s.db")
    code, out, err = run(capsys, "store", "migrate", "--config", str(cfg), "--progress")
    assert code == 0
    assert out == f"migrated the store {db} from schema version 1 to {len(MIGRATIONS)}\n"
    assert err.startswith(f"stepgate: migrating the store {db} from schema version 1 to "
                          f"{len(MIGRATIONS)}...\n")
    assert sqlite_schema(db) == len(MIGRATIONS)


def test_migrate_refuses_a_lost_store_and_a_wrong_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, "sqlite:///s.db")
    assert run(capsys, "store", "migrate", "--config", str(cfg))[0] == 0
    (tmp_path / "s.db").unlink()
    code, _, err = run(capsys, "store", "migrate", "--config", str(cfg))
    assert code == 2 and "s.db.instance remains" in err
    bad = config(tmp_path, "postgresql://db:5432/x", name="bad.yaml")
    code, _, err = run(capsys, "store", "migrate", "--config", str(bad))
    assert code == 2
    assert f"{bad}:2: store: expected a user name before '@'" in err


# ---------------------------------------------------------------------------- copy

async def seed(url: str) -> dict[str, Any]:
    """Two users enrolled through the store API: alice with an active TOTP factor and
    recovery codes (one of them used), bob with an active and a pending TOTP factor."""
    store = await opened(url)
    totp = TotpFactor(store, KEYS)
    now = time.time()
    secret = new_secret()
    await store.add_factor(totp.record("alice", "f_alice", secret, label="phone", now=now))
    await store.add_factor(totp.record("bob", "f_bob1", new_secret(), label="a", now=now))
    await store.add_factor(totp.record("bob", "f_bob2", new_secret(), label="b", now=now,
                                       status="pending"))
    codes = new_codes(10)
    await store.replace_recovery_codes("alice", [code_hash("alice", c) for c in codes], now)
    assert await store.consume_recovery_code("alice", code_hash("alice", codes[0]), now)
    instance = store.instance_id
    await store.close()
    return {"secret": secret, "codes": codes, "instance": instance}


def test_copy_sqlite_to_sqlite_and_show_the_users(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    seeded = asyncio.run(seed(f"sqlite:///{old}"))
    code, out, err = run(capsys, "store", "copy", "--from", f"sqlite:///{old}",
                         "--to", f"sqlite:///{new}", "--progress")
    assert code == 0, err
    assert out.startswith(f"copied 2 user(s), 3 factor(s) and 9 recovery code(s) from {old} "
                          f"to {new}; tokens issued against {old} are refused")
    assert "stepgate: copying 2 user(s)...\n" in err and "copied 2 of 2 user(s)" in err

    code, out, err = run(capsys, "users", "show", "alice", "--config",
                         str(config(tmp_path, "sqlite:///new.db", name="new.yaml")))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["recovery_codes_left"] == 9
    assert [(f["id"], f["type"], f["status"], f["label"]) for f in shown["factors"]] == [
        ("f_alice", "totp", "active", "phone")]

    async def verify() -> None:
        store = await opened(f"sqlite:///{new}")
        try:
            # A new store, so a new instance id: the old store's tokens are refused.
            assert store.instance_id != seeded["instance"]
            assert [(f.id, f.status) for f in await store.factors("bob")] == [
                ("f_bob1", "active"), ("f_bob2", "pending")]
            # The seed was sealed with the data keys, which did not change: it still opens.
            record = (await store.factors("alice"))[0]
            now = time.time()
            result = await TotpFactor(store, KEYS).check(
                record, pyotp.TOTP(seeded["secret"]).at(now), now)
            assert result.ok
            codes = seeded["codes"]
            assert not await store.consume_recovery_code("alice", code_hash("alice", codes[0]),
                                                         now)
            assert await store.consume_recovery_code("alice", code_hash("alice", codes[1]), now)
        finally:
            await store.close()
    asyncio.run(verify())


def test_copy_refuses_a_destination_with_users(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    asyncio.run(seed(f"sqlite:///{old}"))

    async def occupy() -> None:
        store = await opened(f"sqlite:///{new}")
        await store.add_factor(TotpFactor(store, KEYS).record(
            "carol", "f_carol", new_secret(), label="c", now=time.time()))
        await store.close()
    asyncio.run(occupy())
    argv = ["store", "copy", "--from", f"sqlite:///{old}", "--to", f"sqlite:///{new}"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert f"stepgate: the store {new} already has 1 user(s); nothing copied" in err
    assert "add --yes" in err

    async def users() -> list[str]:
        store = await opened(f"sqlite:///{new}")
        try:
            return await store.users()
        finally:
            await store.close()
    assert asyncio.run(users()) == ["carol"]
    code, out, err = run(capsys, *argv, "--yes")
    assert code == 0, err
    assert out.startswith("copied 2 user(s), 3 factor(s) and 9 recovery code(s)")
    assert asyncio.run(users()) == ["alice", "bob", "carol"]
    # Again: every factor is there already and is kept.
    code, out, err = run(capsys, *argv, "--yes")
    assert code == 0, err
    assert "0 factor(s)" in out and "(3 factor(s) already there were kept)" in out


@pytest.mark.parametrize(("argv", "code", "words"), [
    (["--from", "postgres://u@h/db", "--to", "sqlite:///x.db"], 2,
     "--from: expected a URL starting with 'sqlite:///' or 'postgresql://', found "
     "'postgres://u@h/db', did you mean 'postgresql'?"),
    (["--from", "sqlite:///a.db", "--to", "postgresql://u:secret@h:1/db?pool_mx=2"], 2,
     "--to: unknown parameter 'pool_mx', did you mean 'pool_max'?"),
    (["--from", "sqlite:///a.db", "--to", "sqlite:///a.db"], 2,
     "--to: expected another store than --from, found the same one"),
    (["--from", "sqlite:///missing.db", "--to", "sqlite:///b.db"], 1,
     "no store at"),
])
def test_copy_refuses_wrong_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                                 words: str) -> None:
    monkeypatch.chdir(tmp_path)
    found, out, err = run(capsys, "store", "copy", *argv)
    assert (found, out) == (code, "")
    assert words in err and "secret" not in err
    assert not (tmp_path / "b.db").exists()


def test_copy_sqlite_to_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Needs gateway.store.postgresql and a PostgreSQL server (tests/servers.py)."""
    from tests.servers import postgres
    old = tmp_path / "old.db"
    asyncio.run(seed(f"sqlite:///{old}"))
    url = postgres().new_database()
    # The test server trusts loopback: the password is not checked, only never shown.
    with_password = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    code, out, err = run(capsys, "store", "copy", "--from", f"sqlite:///{old}",
                         "--to", with_password)
    assert code == 0, err
    assert out.startswith(f"copied 2 user(s), 3 factor(s) and 9 recovery code(s) from {old} to "
                          f"{url.replace('postgres@', 'postgres:***@')}")
    assert "hunter2" not in out + err
    cfg = config(tmp_path, url, name="pg.yaml")
    code, out, err = run(capsys, "users", "show", "alice", "--config", str(cfg))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["recovery_codes_left"] == 9
    assert [f["id"] for f in shown["factors"]] == ["f_alice"]
    code, out, err = run(capsys, "store", "copy", "--from", f"sqlite:///{old}", "--to", url)
    assert code == 1 and "already has 2 user(s)" in err
    code, out, err = run(capsys, "store", "migrate", "--config", str(cfg))
    assert code == 0, err
