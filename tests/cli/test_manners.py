"""CLI manners: --version, exit statuses that mean the same in every command (0 done, 1
failed, 2 usage or configuration), never a traceback, a confirmation before ``users
reset``, ISO 8601 times in ``audit``, progress lines for long store operations."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.store import open_store
from gateway.store.sqlite import MIGRATIONS
from tests.cli.common import small_config

from ..conftest import DATA, ROOT, SIGNING

ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("STEPGATE_")},
       "STEPGATE_KEYS": SIGNING, "STEPGATE_DATA_KEYS": DATA, "PYTHONPATH": str(ROOT)}


def stepgate(*args: str, cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    variables = {k: v for k, v in {**ENV, **env}.items() if v is not None}
    r = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                       cwd=cwd, env=variables, timeout=60, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr, r.stderr
    return r




def seed(folder: Path, events: list[dict[str, object]]) -> None:
    async def go() -> None:
        store = open_store(f"sqlite:///{folder}/s.db")
        await store.open()
        await store.append_audit(events)
        await store.close()
    asyncio.run(go())


def test_version(tmp_path: Path) -> None:
    r = stepgate("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout == f"stepgate {version('stepgate')}\n"


# (name, setup, arguments, exit status, words on standard error)
EXITS: list[tuple[str, str, list[str], int, str]] = [
    ("unknown command", "", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ("unknown option", "", ["check", "--frob"], 2, "unrecognized arguments: --frob"),
    ("no configuration", "", ["check"], 2,
     "stepgate: expected --config FILE or the environment variable STEPGATE_CONFIG"),
    ("missing configuration file", "", ["users", "--config", "none.yaml", "show", "zoe"], 2,
     "none.yaml: expected a readable configuration file"),
    ("bad configuration", "bad", ["audit", "--config", "c.yaml"], 2,
     "workers: expected an integer"),
    ("bad --since", "config", ["audit", "--config", "c.yaml", "--since", "yesterday"], 2,
     "stepgate: --since: expected epoch seconds or ISO 8601"),
    ("lost store", "lost", ["users", "--config", "c.yaml", "show", "zoe"], 2,
     "is missing, but a store was created there before"),
    ("lost store, audit", "lost", ["audit", "--config", "c.yaml"], 2,
     "is missing, but a store was created there before"),
    ("lost store, run", "lost", ["run", "--config", "c.yaml"], 2,
     "store: expected the store at"),
    ("store not a database", "garbage", ["audit", "--config", "c.yaml"], 1,
     "file is not a database"),
    ("store not a database, run", "garbage", ["run", "--config", "c.yaml"], 2,
     "store: expected an SQLite database at"),
    ("unknown user", "store", ["users", "--config", "c.yaml", "show", "nobody"], 1,
     "stepgate: no user 'nobody' in the store"),
    ("no store yet", "config", ["users", "--config", "c.yaml", "show", "zoe"], 1,
     "no store at"),
    ("no store yet, audit", "config", ["audit", "--config", "c.yaml"], 1, "no store at"),
    ("reset without a terminal", "store", ["users", "--config", "c.yaml", "reset", "zoe"], 2,
     "add --yes to confirm"),
    ("store init over a store", "store", ["store", "init", "--config", "c.yaml"], 1,
     "already exists"),
    ("keys over a keys file", "keys", ["keys", "generate", "--output", "k.keys"], 1,
     "k.keys already exists"),
    ("schema of nothing", "", ["schema", "rules"], 2, "invalid choice: 'rules'"),
]


@pytest.mark.parametrize("name,setup,argv,code,words", EXITS, ids=[e[0] for e in EXITS])
def test_exit_statuses(tmp_path: Path, name: str, setup: str, argv: list[str], code: int,
                       words: str) -> None:
    if setup:
        small_config(tmp_path, **({"workers": 0} if setup == "bad" else {}))
    if setup == "lost":
        (tmp_path / "s.db.instance").write_text("x\n")
    if setup == "garbage":
        (tmp_path / "s.db").write_text("not sqlite " * 100)
    if setup == "store":
        seed(tmp_path, [])
    if setup == "keys":
        (tmp_path / "k.keys").write_text("")
    r = stepgate(*argv, cwd=tmp_path, STEPGATE_CONFIG=None)
    assert r.returncode == code, r.stderr
    assert words in r.stderr
    if setup == "config":
        assert not (tmp_path / "s.db").exists()  # a command that only reads creates no store


def test_users_show_unknown_and_known(tmp_path: Path) -> None:
    small_config(tmp_path)
    seed(tmp_path, [{"ts": 1795574467.0, "event": "failed", "user": "zoe"}])
    known = stepgate("users", "--config", "c.yaml", "show", "zoe", cwd=tmp_path)
    assert known.returncode == 0, known.stderr
    assert json.loads(known.stdout)["user"] == "zoe"
    unknown = stepgate("users", "--config", "c.yaml", "show", "nobody", cwd=tmp_path)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == ("stepgate: no user 'nobody' in the store: no factors, recovery "
                              "codes, failed attempts or audit events\n")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer,code,left", [("n\n", 1, 1), ("\n", 1, 1), ("y\n", 0, 0)])
def test_reset_asks_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], answer: str, code: int,
                                  left: int) -> None:
    monkeypatch.setenv("STEPGATE_KEYS", SIGNING)
    monkeypatch.setenv("STEPGATE_DATA_KEYS", DATA)
    cfg = str(small_config(tmp_path))
    assert main(["users", "--config", cfg, "enrol-totp", "zoe"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    assert main(["users", "--config", cfg, "reset", "zoe"]) == code
    err = capsys.readouterr().err
    assert "resetting zoe removes 1 factor(s) and 0 recovery code(s) and revokes their " \
           "tokens. Go on? [y/N]" in err
    assert main(["users", "--config", cfg, "show", "zoe"]) == (0 if left else 1)
    if left:
        assert "not confirmed; nothing changed" in err


def test_reset_with_yes_does_not_ask(tmp_path: Path) -> None:
    small_config(tmp_path)
    assert stepgate("users", "--config", "c.yaml", "enrol-totp", "zoe", cwd=tmp_path).returncode == 0
    refused = stepgate("users", "--config", "c.yaml", "reset", "zoe", cwd=tmp_path)
    assert refused.returncode == 2
    shown = stepgate("users", "--config", "c.yaml", "show", "zoe", cwd=tmp_path)
    assert len(json.loads(shown.stdout)["factors"]) == 1  # nothing removed
    done = stepgate("users", "--config", "c.yaml", "reset", "zoe", "--yes", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout == "reset zoe: removed 1 factor(s) and recovery code(s)\n"


def test_audit_prints_iso_times_and_json_lines(tmp_path: Path) -> None:
    small_config(tmp_path)
    seed(tmp_path, [
        {"ts": 1795574467.25, "event": "failed", "user": "zoe", "rule": "transfers",
         "detail": "wrong code", "request_id": "r1"},
        {"ts": 1795574530.0, "event": "locked", "user": "zoe"}])
    text = stepgate("audit", "--config", "c.yaml", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        '2026-11-25T02:41:07Z  failed  user=zoe rule=transfers detail="wrong code" '
        'request_id=r1',
        "2026-11-25T02:42:10Z  locked  user=zoe"]
    lines = stepgate("audit", "--config", "c.yaml", "--json", cwd=tmp_path).stdout.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["time"] for d in docs] == ["2026-11-25T02:41:07Z", "2026-11-25T02:42:10Z"]
    assert docs[0]["ts"] == 1795574467.25 and docs[0]["detail"] == "wrong code"
    # the times it prints are the times it reads
    since = stepgate("audit", "--config", "c.yaml", "--json", "--since", "2026-11-25T02:42:10Z",
                     cwd=tmp_path)
    assert [json.loads(line)["event"] for line in since.stdout.splitlines()] == ["locked"]
    naive = stepgate("audit", "--config", "c.yaml", "--json", "--until", "2026-11-25T02:42:00",
                     cwd=tmp_path)
    assert [json.loads(line)["event"] for line in naive.stdout.splitlines()] == ["failed"]


def test_store_init_reports_progress_when_asked(tmp_path: Path) -> None:
    small_config(tmp_path)
    quiet = stepgate("store", "init", "--config", "c.yaml", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""  # standard error is not a terminal
    for name in ("s.db", "s.db-wal", "s.db-shm", "s.db.instance"):
        (tmp_path / name).unlink(missing_ok=True)
    loud = stepgate("store", "init", "--config", "c.yaml", "--progress", cwd=tmp_path)
    assert loud.returncode == 0
    lines = loud.stderr.splitlines()
    assert lines[0] == f"stepgate: creating the store {tmp_path / 's.db'}..."
    assert lines[1].startswith(f"stepgate: creating the store {tmp_path / 's.db'}: done in ")


def test_migrations_report_progress(tmp_path: Path) -> None:
    small_config(tmp_path)
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript(MIGRATIONS[0])
    db.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL);"
                     "INSERT INTO schema_version VALUES (1);")
    db.close()
    r = stepgate("audit", "--config", "c.yaml", "--progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (f"stepgate: migrating the store {tmp_path / 's.db'} from schema version 1 to "
            f"{len(MIGRATIONS)}...") in r.stderr.splitlines()
    again = stepgate("audit", "--config", "c.yaml", "--progress", cwd=tmp_path)
    assert again.stderr == ""  # nothing left to migrate
