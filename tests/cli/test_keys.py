"""Keys that explain themselves: one keys file for both lists, ``--keys-file``, the demo's
keys where every command finds them, and messages that name the variable or file that is
missing and the command that creates it."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.run import DEMO_KEYS, ensure_demo_keys, worker_app
from gateway.config.load import load_settings
from gateway.config.settings import KeySettings
from gateway.keys import KeyError_, KeyRing, generate_data_key, generate_signing_key
from tests.cli.common import small_config

from ..conftest import DATA, ROOT, SIGNING

NAMED = f"STEPGATE_KEYS={SIGNING}\nSTEPGATE_DATA_KEYS={DATA}\n"
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("STEPGATE_")}


def stepgate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                       cwd=cwd, env={**BASE_ENV, "PYTHONPATH": str(ROOT), **env}, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r




def clear_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STEPGATE_KEYS", "STEPGATE_DATA_KEYS", "STEPGATE_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- the keys file


@pytest.mark.parametrize("text", [
    NAMED,
    f"# made by stepgate keys generate\n\nexport STEPGATE_KEYS='{SIGNING}'\n"
    f'STEPGATE_DATA_KEYS="{DATA}"\n',
    f"STEPGATE_DATA_KEYS={DATA}\nSTEPGATE_KEYS={SIGNING},{'o' * 40}\n",
], ids=["as generated", "comments, export and quotes", "any order, two signing keys"])
def test_one_keys_file_serves_both_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         text: str) -> None:
    clear_keys(monkeypatch)
    (tmp_path / "k").write_text(text)
    ring = KeyRing.from_settings(KeySettings(None, tmp_path / "k", None, tmp_path / "k"))
    assert ring.signing[0] == SIGNING
    assert ring.decrypt(KeyRing([SIGNING], [DATA]).encrypt(b"x", "a"), "a") == b"x"


def test_a_bare_list_still_serves_one_list(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    monkeypatch.setenv("STEPGATE_DATA_KEYS", DATA)
    (tmp_path / "signing").write_text(f"{SIGNING}\n{'o' * 40}\n")
    ring = KeyRing.from_settings(KeySettings(None, tmp_path / "signing"))
    assert ring.signing == [SIGNING, "o" * 40]


def test_the_variable_wins_over_the_file(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    other = generate_signing_key()
    monkeypatch.setenv("STEPGATE_KEYS", other)
    (tmp_path / "k").write_text(NAMED)
    ring = KeyRing.from_settings(KeySettings("STEPGATE_KEYS", tmp_path / "k",
                                             "STEPGATE_DATA_KEYS", tmp_path / "k"))
    assert ring.signing == [other]


def test_every_missing_source_is_named_at_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    with pytest.raises(KeyError_) as exc:
        KeyRing.from_settings(KeySettings("STEPGATE_KEYS", None, "STEPGATE_DATA_KEYS",
                                          tmp_path / "data.keys"))
    assert exc.value.problems == [
        "keys.env: expected signing keys in environment variable STEPGATE_KEYS, found it "
        "unset or empty",
        "keys.data_file: expected a readable file of data keys (or environment variable "
        f"STEPGATE_DATA_KEYS, which is unset or empty), found No such file or directory at "
        f"{tmp_path / 'data.keys'}"]
    assert exc.value.unset == ("STEPGATE_KEYS",)
    assert exc.value.unreadable == (tmp_path / "data.keys",)


def test_keys_file_replaces_the_configured_sources(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    monkeypatch.setenv("STEPGATE_KEYS", generate_signing_key())
    (tmp_path / "k").write_text(NAMED)
    ring = KeyRing.from_settings(KeySettings(), tmp_path / "k")
    assert ring.signing == [SIGNING]
    (tmp_path / "bare").write_text(SIGNING)
    with pytest.raises(KeyError_, match="--keys-file: expected the lines STEPGATE_KEYS=... and "
                                        "STEPGATE_DATA_KEYS=..."):
        KeyRing.from_settings(KeySettings(), tmp_path / "bare")
    with pytest.raises(KeyError_) as missing:
        KeyRing.from_settings(KeySettings(), tmp_path / "none")
    assert len(missing.value.problems) == 1  # one file, one problem
    assert missing.value.problems[0].startswith("--keys-file: expected a readable file of keys")


def test_keys_generate_output_writes_a_private_file_once(tmp_path: Path) -> None:
    r = stepgate("keys", "generate", "--output", "k.keys", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the keys are in the file only
    path = tmp_path / "k.keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert sorted(lines) == ["STEPGATE_DATA_KEYS", "STEPGATE_KEYS"]
    KeyRing.from_settings(KeySettings(None, path, None, path))
    before = path.read_text()
    again = stepgate("keys", "generate", "--output", "k.keys", cwd=tmp_path)
    assert again.returncode == 1
    assert "k.keys already exists" in again.stderr
    assert path.read_text() == before


# ---------------------------------------------------------------- every command that needs keys


NEEDS_KEYS = [["check"], ["run"], ["users", "enrol-totp", "zoe"]]


@pytest.mark.parametrize("command", NEEDS_KEYS, ids=lambda c: " ".join(c))
def test_missing_keys_name_the_variable_and_the_fix(tmp_path: Path, command: list[str]) -> None:
    small_config(tmp_path)
    r = stepgate(*command, "--config", "c.yaml", cwd=tmp_path)
    assert r.returncode == 2
    for words in ("c.yaml: keys.env: expected signing keys in environment variable "
                  "STEPGATE_KEYS, found it unset or empty",
                  "c.yaml: keys.data_env: expected data keys in environment variable "
                  "STEPGATE_DATA_KEYS, found it unset or empty",
                  "to create keys: stepgate keys generate --output stepgate.keys",
                  "then set keys.file and keys.data_file to stepgate.keys in c.yaml",
                  "or pass --keys-file stepgate.keys"):
        assert words in r.stderr, r.stderr
    assert not (tmp_path / "s.db").exists()  # refused before the store was touched


@pytest.mark.parametrize("command", NEEDS_KEYS, ids=lambda c: " ".join(c))
def test_a_missing_keys_file_names_the_file_and_the_fix(tmp_path: Path,
                                                        command: list[str]) -> None:
    small_config(tmp_path, keys={"file": "secrets/k", "data_file": "secrets/k"})
    r = stepgate(*command, "--config", "c.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert (f"c.yaml: keys.file: expected a readable file of keys, found No such file or "
            f"directory at {tmp_path / 'secrets' / 'k'}") in r.stderr
    assert "to create secrets/k: stepgate keys generate --output secrets/k" in r.stderr


@pytest.mark.parametrize("command", [["check"], ["users", "enrol-totp", "zoe"]],
                         ids=lambda c: " ".join(c))
def test_keys_file_option_and_variable(tmp_path: Path, command: list[str]) -> None:
    small_config(tmp_path)
    (tmp_path / "k.keys").write_text(NAMED)
    r = stepgate(*command, "--config", "c.yaml", "--keys-file", "k.keys", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = stepgate(*command, "--config", "c.yaml", cwd=tmp_path, STEPGATE_KEYS_FILE="k.keys")
    assert r.returncode == 0, r.stderr
    missing = stepgate(*command, "--config", "c.yaml", "--keys-file", "no.keys", cwd=tmp_path)
    assert missing.returncode == 2
    assert "--keys-file: expected a readable file of keys, found No such file" in missing.stderr
    assert "to create no.keys: stepgate keys generate --output no.keys" in missing.stderr


def test_workers_read_the_keys_file_run_was_given(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    (tmp_path / "k.keys").write_text(NAMED)
    monkeypatch.setenv("STEPGATE_CONFIG", str(small_config(tmp_path)))
    monkeypatch.setenv("STEPGATE_KEYS_FILE", str(tmp_path / "k.keys"))
    assert worker_app().keys.signing == [SIGNING]


# ---------------------------------------------------------------- the demo's keys


def test_the_demo_configuration_names_its_keys_file() -> None:
    keys = load_settings(ROOT / "config.example.yaml").keys
    assert keys.file == keys.data_file == ROOT / DEMO_KEYS
    assert (keys.env, keys.data_env) == ("STEPGATE_KEYS", "STEPGATE_DATA_KEYS")


def demo_args() -> argparse.Namespace:
    return argparse.Namespace(keys_file=None)


def test_demo_writes_the_configured_keys_file_where_other_commands_find_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    monkeypatch.chdir(tmp_path)
    cfg = small_config(tmp_path, keys={"file": "demo.keys", "data_file": "demo.keys"})
    s = load_settings(cfg)
    ensure_demo_keys(s, demo_args())
    path = tmp_path / "demo.keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = path.read_text()
    ensure_demo_keys(s, demo_args())  # a second start keeps them
    assert path.read_text() == written
    r = stepgate("users", "--config", "c.yaml", "enrol-totp", "zoe", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_demo_keeps_keys_an_earlier_demo_wrote_as_json(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    monkeypatch.chdir(tmp_path)
    old = {"STEPGATE_KEYS": SIGNING, "STEPGATE_DATA_KEYS": DATA}
    (tmp_path / DEMO_KEYS).write_text(json.dumps(old) + "\n")
    s = load_settings(small_config(tmp_path, keys={"file": DEMO_KEYS, "data_file": DEMO_KEYS}))
    ensure_demo_keys(s, demo_args())
    ring = KeyRing.from_settings(s.keys)
    assert ring.signing == [SIGNING]
    assert ring.decrypt(KeyRing([SIGNING], [DATA]).encrypt(b"x", "a"), "a") == b"x"


def test_demo_on_a_configuration_without_a_keys_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    clear_keys(monkeypatch)
    monkeypatch.chdir(tmp_path)
    args = demo_args()
    ensure_demo_keys(load_settings(small_config(tmp_path)), args)
    assert args.keys_file == DEMO_KEYS
    assert f"--keys-file {DEMO_KEYS}" in capsys.readouterr().out
    KeyRing.from_settings(KeySettings(), tmp_path / DEMO_KEYS)


def test_demo_leaves_keys_it_did_not_make_alone(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clear_keys(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEPGATE_KEYS", SIGNING)
    monkeypatch.setenv("STEPGATE_DATA_KEYS", generate_data_key())
    ensure_demo_keys(load_settings(small_config(tmp_path)), demo_args())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "p.yaml"]
