"""``stepgate check`` refuses exactly what ``stepgate run`` refuses: keys, the admin key, the
audit file, a lost store, as well as the file itself, every problem in one list."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from gateway.cli import main

from ..conftest import DATA, ROOT, SIGNING

ADMIN = "a" * 30

Setup = Callable[[Path, pytest.MonkeyPatch], dict[str, Any]]


def config(folder: Path, **extra: Any) -> Path:
    (folder / "p.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "a", "match": {"paths": ["/x"]}, "action": "allow"}]}))
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump({"upstream": {"url": "http://127.0.0.1:1"},
                                    "policies": "p.yaml", "store": "sqlite:///s.db", **extra}))
    return path


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = exit_code(["check", "--config", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


def run_refuses(path: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """``stepgate run`` up to the moment it would serve: the server is replaced by a
    recorder, so reaching it means ``run`` accepted everything."""
    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    try:
        code = exit_code(["run", "--config", str(path)])
    except Exception:  # noqa: BLE001 - a process that dies with a traceback refuses too
        return True
    return code != 0 or not served


def env(monkeypatch: pytest.MonkeyPatch, **values: str | None) -> None:
    base: dict[str, str | None] = {"STEPGATE_KEYS": SIGNING, "STEPGATE_DATA_KEYS": DATA,
                                   "STEPGATE_ADMIN_KEY": None}
    for name, value in {**base, **values}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


# (name, configuration keys, environment, files to create, refused, words of the message)
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, str | None], dict[str, str], bool,
                      list[str]]] = [
    ("ready", {}, {}, {}, False, []),
    ("signing keys unset", {}, {"STEPGATE_KEYS": None}, {}, True,
     ["keys.env: expected signing keys in environment variable STEPGATE_KEYS",
      "stepgate keys generate"]),
    ("both key lists unset", {}, {"STEPGATE_KEYS": None, "STEPGATE_DATA_KEYS": None}, {}, True,
     ["keys.env: expected signing keys in environment variable STEPGATE_KEYS",
      "keys.data_env: expected data keys in environment variable STEPGATE_DATA_KEYS"]),
    ("signing key too short", {}, {"STEPGATE_KEYS": "short"}, {}, True,
     ["signing keys: expected at least 32 characters each"]),
    ("data key malformed", {}, {"STEPGATE_DATA_KEYS": "not-a-key"}, {}, True,
     ["data keys: expected 32 bytes"]),
    ("key file missing", {"keys": {"file": "signing.keys"}}, {}, {}, True,
     ["keys.file: expected a readable file of signing keys", "signing.keys",
      "stepgate keys generate"]),
    ("key file unreadable", {"keys": {"file": "keys.d"}}, {}, {"keys.d/": ""}, True,
     ["keys.file: expected a readable file of signing keys", "keys.d"]),
    ("key file present", {"keys": {"file": "signing.keys"}}, {}, {"signing.keys": SIGNING},
     False, []),
    ("admin key too short", {"admin": {"key_env": "STEPGATE_ADMIN_KEY"}},
     {"STEPGATE_ADMIN_KEY": "short"}, {}, True,
     ["admin.key_env: expected at least 24 characters in environment variable "
      "STEPGATE_ADMIN_KEY, found 5"]),
    ("admin key unset: admin API off", {"admin": {"key_env": "STEPGATE_ADMIN_KEY"}}, {}, {},
     False, []),
    ("admin key good", {"admin": {"key_env": "STEPGATE_ADMIN_KEY"}},
     {"STEPGATE_ADMIN_KEY": ADMIN}, {}, False, []),
    ("admin key file unreadable", {"admin": {"key_file": "admin.d"}}, {}, {"admin.d/": ""},
     True, ["admin.key_file: expected a readable file"]),
    ("admin key file too short", {"admin": {"key_file": "admin.key"}}, {},
     {"admin.key": "short\n"}, True, ["admin.key_file: expected at least 24 characters"]),
    ("audit folder missing", {"audit": {"path": "logs/audit.jsonl"}}, {}, {}, True,
     ["audit.path: expected a file the gateway can append to", "found no folder"]),
    ("audit file", {"audit": {"path": "audit.jsonl"}}, {}, {}, False, []),
    ("access log folder missing", {"access_log": {"path": "logs/access.jsonl"}}, {}, {}, True,
     ["access_log.path: expected a file the gateway can append to", "found no folder"]),
    ("forward-auth secret unset", {"forward_auth": {"trusted_proxies": ["10.0.0.0/8"],
                                                    "secret_env": "FA_SECRET_UNSET"}},
     {"FA_SECRET_UNSET": None}, {}, True,
     ["forward_auth.secret_env: expected at least 24 characters in environment variable "
      "FA_SECRET_UNSET, found it unset or empty"]),
    ("store lost", {}, {}, {"s.db.instance": "x\n"}, True,
     ["store: expected the store at", "stepgate store init"]),
    ("store not a database", {}, {}, {"s.db": "not sqlite " * 100}, True,
     ["store: expected an SQLite database at", "s.db"]),
    ("store a folder", {}, {}, {"s.db/": ""}, True,
     ["store: expected an SQLite database at", "found a folder"]),
    ("one keys file for both lists", {"keys": {"file": "k.keys", "data_file": "k.keys"}},
     {"STEPGATE_KEYS": None, "STEPGATE_DATA_KEYS": None},
     {"k.keys": f"STEPGATE_KEYS={SIGNING}\nSTEPGATE_DATA_KEYS={DATA}\n"}, False, []),
    ("one keys file holding one bare list", {"keys": {"file": "k.keys", "data_file": "k.keys"}},
     {}, {"k.keys": SIGNING + "\n"}, True,
     ["keys.file: expected the lines STEPGATE_KEYS=... and STEPGATE_DATA_KEYS=..."]),
    ("keys file without the data keys", {"keys": {"file": "k.keys", "data_file": "k.keys"}},
     {}, {"k.keys": f"STEPGATE_KEYS={SIGNING}\n"}, True,
     ["keys.data_file: expected a line STEPGATE_DATA_KEYS=... with data keys in"]),
    ("configuration error", {"workers": 0}, {}, {}, True,
     ["workers: expected an integer >= 1 and <= 64, found the number 0"]),
]


@pytest.mark.parametrize("name,keys,variables,files,refused,words", SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_check_refuses_exactly_when_run_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str, keys: dict[str, Any], variables: dict[str, str | None],
        files: dict[str, str], refused: bool, words: list[str]) -> None:
    env(monkeypatch, **variables)
    for file, text in files.items():
        if file.endswith("/"):
            (tmp_path / file).mkdir()
        else:
            (tmp_path / file).write_text(text)
    path = config(tmp_path, **keys)
    code, out = check(path, capsys)
    assert (code != 0) == refused, out
    assert code in (0, 2)
    for word in words:
        assert word in out, out
    # check creates nothing that would change what run finds
    assert (tmp_path / "s.db").exists() == ("s.db" in files or "s.db/" in files)
    assert run_refuses(path, monkeypatch) == refused


def test_key_problems_come_with_the_configuration_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env(monkeypatch, STEPGATE_KEYS=None, STEPGATE_ADMIN_KEY="short")
    path = config(tmp_path, workers=0, upstream={"url": "ftp://x"},
                  admin={"key_env": "STEPGATE_ADMIN_KEY"})
    code, out = check(path, capsys)
    assert code == 2
    assert "4 problem(s)" in out
    for word in ("workers:", "upstream.url:", "keys.env:", "admin.key_env:"):
        assert word in out


def test_a_broken_section_is_not_checked_further(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env(monkeypatch, STEPGATE_KEYS=None)
    code, out = check(config(tmp_path, keys={"file": 5}), capsys)
    assert code == 2
    assert "keys.file: expected a string, found the number 5" in out
    assert "keys.env" not in out  # the keys' sources are unknown while the section is wrong


def test_check_as_a_process_names_the_variable_and_the_fix(tmp_path: Path) -> None:
    variables = {k: v for k, v in os.environ.items() if k not in ("STEPGATE_KEYS",)}
    variables["STEPGATE_DATA_KEYS"] = DATA
    r = subprocess.run([sys.executable, "-m", "gateway", "check", "--config",
                        str(config(tmp_path))], capture_output=True, text=True, cwd=ROOT,
                       env=variables, timeout=60)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        "stepgate: 1 problem(s) in the configuration:",
        f"  - {tmp_path / 'c.yaml'}: keys.env: expected signing keys in environment variable "
        "STEPGATE_KEYS, found it unset or empty",
        f"to create keys: stepgate keys generate --output {tmp_path / 'stepgate.keys'}",
        f"  then set keys.file and keys.data_file to stepgate.keys in {tmp_path / 'c.yaml'},",
        f"  or pass --keys-file {tmp_path / 'stepgate.keys'} to each command,",
        "  or set STEPGATE_KEYS to the values the file holds"]
