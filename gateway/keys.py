"""Key material: signing keys for tickets and tokens, data keys for secrets at rest, and
the admin API's bearer key; where each comes from and, when it does not, exactly why.

Each list of keys comes from an environment variable or a file (docs/operations.md, Keys).
A keys file holds either the lines ``stepgate keys generate`` prints::

    STEPGATE_KEYS=<signing keys, comma-separated, newest first>
    STEPGATE_DATA_KEYS=<data keys, comma-separated, newest first>

(one file then serves both lists), or one bare list, one key a line, for ``keys.file`` or
``keys.data_file`` alone. Blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config.settings import KeySettings, Settings

MIN_SIGNING_KEY_LENGTH = 32
SIGNING_NAME = "STEPGATE_KEYS"
DATA_NAME = "STEPGATE_DATA_KEYS"
_NAMED = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


class KeyError_(Exception):
    """Keys are missing or malformed; the gateway refuses to start. ``problems`` holds one
    sentence per problem; ``unset`` the variables and ``unreadable`` the files that were
    looked for and not found, so a command can say how to create them."""

    def __init__(self, *problems: str, unset: tuple[str, ...] = (),
                 unreadable: tuple[Path, ...] = ()) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)
        self.unset = unset
        self.unreadable = unreadable


def generate_signing_key() -> str:
    return secrets.token_urlsafe(32)


def generate_data_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def keys_file_text() -> str:
    """A new keys file: what ``stepgate keys generate`` prints."""
    return f"{SIGNING_NAME}={generate_signing_key()}\n{DATA_NAME}={generate_data_key()}\n"


@dataclass(frozen=True)
class KeySource:
    """Where one list of keys comes from, and the names the configuration gives it."""

    what: str                  # "signing keys" or "data keys"
    env: str | None
    file: Path | None
    name: str                  # its line in a keys file: STEPGATE_KEYS or STEPGATE_DATA_KEYS
    env_setting: str           # keys.env or keys.data_env
    file_setting: str          # keys.file, keys.data_file or --keys-file
    shared: bool = False       # the file holds both lists


def key_sources(settings: KeySettings,
                keys_file: Path | None = None) -> tuple[KeySource, KeySource]:
    """The signing and data keys' sources as configured, or both from ``keys_file`` (the
    command line's ``--keys-file``), which then replaces the configured ones."""
    if keys_file is not None:
        return (KeySource("signing keys", None, keys_file, SIGNING_NAME, "keys.env",
                          "--keys-file", True),
                KeySource("data keys", None, keys_file, DATA_NAME, "keys.data_env",
                          "--keys-file", True))
    shared = settings.file is not None and settings.file == settings.data_file
    return (KeySource("signing keys", settings.env, settings.file, SIGNING_NAME, "keys.env",
                      "keys.file", shared),
            KeySource("data keys", settings.data_env, settings.data_file, DATA_NAME,
                      "keys.data_env", "keys.data_file", shared))


def _split(raw: str) -> list[str]:
    return [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]


def _from_file(src: KeySource, text: str) -> list[str]:
    assert src.file is not None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    named = [m for m in map(_NAMED.match, lines) if m]
    if not named:
        if src.shared:
            raise KeyError_(f"{src.file_setting}: expected the lines {SIGNING_NAME}=... and "
                            f"{DATA_NAME}=... that 'stepgate keys generate' prints in "
                            f"{src.file}, which holds both lists, found bare keys")
        keys = _split("\n".join(lines))
    else:
        keys = [k for m in named if m[1] == src.name for k in _split(m[2].strip().strip("'\""))]
        if not keys:
            found = ", ".join(sorted({m[1] for m in named}))
            raise KeyError_(f"{src.file_setting}: expected a line {src.name}=... with "
                            f"{src.what} in {src.file}, found only {found}")
    if not keys:
        raise KeyError_(f"{src.file_setting}: expected {src.what} in {src.file}, found none")
    return keys


def read_keys(src: KeySource) -> list[str]:
    """One list of keys from its variable, or from its file when the variable is unset or
    not configured; KeyError_ names the variable or the file and why."""
    if src.env:
        keys = _split(os.environ.get(src.env, ""))
        if keys:
            return keys
    if src.file is None:
        if src.env:
            raise KeyError_(f"{src.env_setting}: expected {src.what} in environment variable "
                            f"{src.env}, found it unset or empty", unset=(src.env,))
        raise KeyError_(f"keys: expected {src.env_setting} or {src.file_setting} to say where "
                        f"the {src.what} are, found neither")
    try:
        text = src.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "bytes that are not UTF-8"
        also = (f" (or environment variable {src.env}, which is unset or empty)"
                if src.env else "")
        what = "keys" if src.shared else src.what
        raise KeyError_(f"{src.file_setting}: expected a readable file of {what}{also}, "
                        f"found {reason} at {src.file}",
                        unreadable=(src.file,) if isinstance(exc, FileNotFoundError) else ()
                        ) from None
    return _from_file(src, text)


@dataclass(frozen=True)
class DataKey:
    kid: str
    aead: AESGCM


class KeyRing:
    """Signing keys (first signs, all verify) and AES-256-GCM data keys (first encrypts)."""

    def __init__(self, signing: list[str], data: list[str]) -> None:
        problems: list[str] = []
        if any(len(k) < MIN_SIGNING_KEY_LENGTH for k in signing):
            short = min(len(k) for k in signing)
            problems.append(f"signing keys: expected at least {MIN_SIGNING_KEY_LENGTH} "
                            f"characters each, found one of {short}")
        self.signing = signing
        self.data: list[DataKey] = []
        for k in data:
            try:
                raw = base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
            except ValueError:
                raw = b""
            if len(raw) != 32:
                found = f"one of {len(raw)} bytes" if raw else "one that is not base64"
                problems.append(f"data keys: expected 32 bytes in URL-safe base64 each, found "
                                f"{found} (as 'stepgate keys generate' prints them)")
                break
            kid = hashlib.sha256(raw).hexdigest()[:8]
            self.data.append(DataKey(kid, AESGCM(raw)))
            if len(self.data) == 1:
                # Keys the hashes of delivered codes, so a copy of the store alone cannot
                # brute-force the million six-digit candidates.
                self.mac_key = hashlib.sha256(b"stepgate code mac\x00" + raw).digest()
        if not signing:
            problems.append("signing keys: expected at least one")
        if not data:
            problems.append("data keys: expected at least one")
        if problems:
            raise KeyError_(*problems)

    @classmethod
    def from_settings(cls, settings: KeySettings, keys_file: Path | None = None) -> KeyRing:
        """The keys as configured (or from ``keys_file``); KeyError_ lists every problem of
        both lists at once."""
        lists: list[list[str]] = []
        errors: list[KeyError_] = []
        for src in key_sources(settings, keys_file):
            try:
                lists.append(read_keys(src))
            except KeyError_ as exc:
                errors.append(exc)
        if errors:
            # A file that serves both lists and cannot be read is one problem, not two.
            raise KeyError_(*dict.fromkeys(p for e in errors for p in e.problems),
                            unset=tuple(v for e in errors for v in e.unset),
                            unreadable=tuple(dict.fromkeys(f for e in errors
                                                           for f in e.unreadable)))
        return cls(*lists)

    def encrypt(self, plaintext: bytes, associated: str) -> str:
        key = self.data[0]
        nonce = os.urandom(12)
        sealed = key.aead.encrypt(nonce, plaintext, associated.encode())
        return f"v1.{key.kid}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, blob: str, associated: str) -> bytes:
        """Raises ValueError when the blob was not sealed for ``associated`` by a known key."""
        try:
            version, kid, body = blob.split(".", 2)
        except ValueError:
            raise ValueError("malformed sealed value") from None
        if version != "v1":
            raise ValueError("unknown sealed value version")
        raw = base64.urlsafe_b64decode(body)
        for key in self.data:
            if key.kid == kid:
                try:
                    return key.aead.decrypt(raw[:12], raw[12:], associated.encode())
                except Exception:
                    raise ValueError("sealed value does not open") from None
        raise ValueError("sealed value uses an unknown data key")


MIN_KEY_LENGTH = 24
ADMIN_FIX = (f"use {MIN_KEY_LENGTH} or more random characters, such as a key 'stepgate keys "
             "generate' prints")


class AdminKeyError(Exception):
    """The admin key or the forward-auth secret is configured but unusable; the gateway
    refuses to start."""


def load_admin_key(settings: Settings) -> bytes | None:
    """The admin API's bearer key from the environment or a file, or None when the admin
    API is off (neither is configured, or the variable is unset and no file is named)."""
    key = ""
    source, setting = "", ""
    if settings.admin_key_env:
        key = os.environ.get(settings.admin_key_env, "").strip()
        source, setting = f"environment variable {settings.admin_key_env}", "admin.key_env"
    if not key and settings.admin_key_file is not None:
        file = settings.admin_key_file
        try:
            key = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminKeyError(f"admin.key_file: expected a readable file, found "
                                f"{exc.strerror} at {file}") from None
        except UnicodeDecodeError as exc:
            raise AdminKeyError(f"admin.key_file: expected a UTF-8 text file, found "
                                f"{exc.reason} at {file}") from None
        source, setting = f"file {file}", "admin.key_file"
    if not key:
        return None
    if len(key) < MIN_KEY_LENGTH:
        raise AdminKeyError(f"{setting}: expected at least {MIN_KEY_LENGTH} characters in "
                            f"{source}, found {len(key)} ({ADMIN_FIX})")
    return key.encode()


def load_forward_secret(settings: Settings) -> bytes | None:
    """The secret every forward-auth request must carry, or None when none is configured.
    A named variable that is unset or short is an error: the gateway refuses to start
    rather than answer the endpoints without the check the configuration asks for."""
    name = settings.forward_auth.secret_env
    if name is None:
        return None
    secret = os.environ.get(name, "").strip()
    if len(secret) < MIN_KEY_LENGTH:
        found = "it unset or empty" if not secret else f"{len(secret)} characters"
        raise AdminKeyError(f"forward_auth.secret_env: expected at least {MIN_KEY_LENGTH} "
                            f"characters in environment variable {name}, found {found} "
                            f"({ADMIN_FIX})")
    return secret.encode()

