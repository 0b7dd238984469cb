"""What ``stepgate run`` checks before it serves, and ``stepgate check`` reports without
serving: the keys and the admin key (read by gateway.keys, as the gateway reads them), the
files the configuration names (audit, htpasswd) and the store (not lost, a database the
gateway can open, in a folder it can write) with the passwords its URLs and the Redis URL
name in a variable or a file. Both commands ask these functions, so
``check`` refuses what ``run`` refuses; nothing here creates or changes a file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from gateway.cli.common import key_hints, key_problems
from gateway.config.load import CheckedConfig
from gateway.config.settings import Settings
from gateway.config.urls import parameters
from gateway.keys import AdminKeyError, KeyError_, KeyRing, load_admin_key, load_forward_secret
from gateway.store.sqlite import marker_path


@dataclass
class Preflight:
    """Every problem found (one sentence each, starting with where), how to fix the keys,
    and the key ring when it could be read."""

    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    keys: KeyRing | None = None


def _keys(out: Preflight, where: str, s: Settings, keys_file: Path | None) -> None:
    try:
        out.keys = KeyRing.from_settings(s.keys, keys_file)
    except KeyError_ as exc:
        out.problems += key_problems(exc, where)
        out.hints += key_hints(exc, s.source)


def _secret(where: str, s: Settings, load: Callable[[Settings], bytes | None]) -> list[str]:
    """The admin key or the forward-auth secret, read as the gateway reads it at start."""
    try:
        load(s)
    except AdminKeyError as exc:
        return [f"{where}: {exc}"]
    return []


def _writable_folder(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path`` when the gateway could not create
    files there, else None."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return None
    return folder


def _audit(where: str, path: str, key: str = "audit.path") -> list[str]:
    if path == "-":
        return []
    # `run` opens it for appending before it serves (gateway.audit).
    p = Path(path)
    if p.is_dir():
        reason = "a folder"
    elif p.exists():
        reason = "" if os.access(p, os.W_OK) else "no permission to write"
    elif not p.parent.is_dir():
        reason = f"no folder {p.parent}"
    elif not os.access(p.parent, os.W_OK | os.X_OK):
        reason = "no permission to write"
    else:
        reason = ""
    if not reason:
        return []
    return [f"{where}: {key}: expected a file the gateway can append to at {p}, found "
            f"{reason}"]


def _htpasswd(where: str, path: Path) -> list[str]:
    try:
        path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "bytes that are not UTF-8"
        return [f"{where}: identity.basic.htpasswd: expected a readable htpasswd file, found "
                f"{reason} at {path}"]
    return []


def _store(where: str, url: str) -> list[str]:
    if not url.startswith("sqlite:///"):
        return []
    path = url.removeprefix("sqlite:///")
    if path == ":memory:":
        return []
    db, marker = Path(path), marker_path(path)
    if not db.exists():
        # The same test the store makes when `run` opens it.
        if marker.exists():
            return [f"{where}: store: expected the store at {db}, found it missing although "
                    f"{marker} says one was created there: restore it from a backup, or run "
                    "'stepgate store init --config FILE' to start with an empty store"]
        folder = _writable_folder(db.parent)
        if folder is not None:
            return [f"{where}: store: expected a folder the gateway can create {db} in, found "
                    f"no permission to write in {folder}"]
        return []
    if db.is_dir():
        return [f"{where}: store: expected an SQLite database at {db}, found a folder"]
    # Writing needs the file and its folder (SQLite keeps -wal and -shm files beside it).
    if not os.access(db, os.R_OK | os.W_OK) or _writable_folder(db.parent) is not None:
        return [f"{where}: store: expected a database the gateway can read and write at {db} "
                "(and its folder), found no permission"]
    try:
        with closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True,
                                     timeout=2.0)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return [f"{where}: store: expected an SQLite database at {db}, found an error: {exc}"]
    return []


def _password(where: str, key: str, url: str) -> list[str]:
    """The password a URL's ``password_env`` or ``password_file`` names, as the backend
    reads it when it connects."""
    found = parameters(url)
    env, file = found.get("password_env"), found.get("password_file")
    if env is not None and not os.environ.get(env):
        return [f"{where}: {key}: expected the password in environment variable {env} "
                "(parameter password_env), found it unset or empty"]
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "bytes that are not UTF-8"
            return [f"{where}: {key}: expected a readable password file (parameter "
                    f"password_file), found {reason} at {path}"]
        if not text.rstrip("\r\n"):
            return [f"{where}: {key}: expected a password in the file {path} (parameter "
                    "password_file), found it empty"]
    return []


def preflight(checked: CheckedConfig, keys_file: Path | None = None) -> Preflight:
    """What ``run`` would refuse beyond the configuration file itself, for every section
    that validated (a section with errors cannot say where its keys or files are)."""
    s, ok, where = checked.so_far(), checked.valid, checked.where
    out = Preflight()
    if "keys" in ok or keys_file is not None:
        _keys(out, where, s, keys_file)
    if "admin" in ok:
        out.problems += _secret(where, s, load_admin_key)
    if "forward_auth" in ok:
        out.problems += _secret(where, s, load_forward_secret)
    if "audit" in ok:
        out.problems += _audit(where, s.audit_path)
    if "operations" in ok and s.access_log.path is not None:
        out.problems += _audit(where, s.access_log.path, "access_log.path")
    if "identity" in ok and s.basic is not None and s.basic.htpasswd is not None:
        out.problems += _htpasswd(where, s.basic.htpasswd)
    if "store" in ok:
        out.problems += _store(where, s.store_url)
        if not s.store_url.startswith("sqlite:///"):
            out.problems += _password(where, "store", s.store_url)
    if "redis" in ok and s.redis_url is not None:
        out.problems += _password(where, "redis", s.redis_url)
    return out
