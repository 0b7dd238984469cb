"""Key material: signing keys for tickets and tokens, data keys for secrets at rest."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config.settings import KeySettings, Settings

MIN_SIGNING_KEY_LENGTH = 32


class KeyError_(Exception):
    """Keys are missing or malformed; the gateway refuses to start."""


def generate_signing_key() -> str:
    return secrets.token_urlsafe(32)


def generate_data_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _read(env: str | None, file: str | os.PathLike[str] | None, what: str) -> list[str]:
    raw = ""
    source = ""
    if env:
        raw = os.environ.get(env, "")
        source = f"environment variable {env}"
    if not raw and file is not None:
        try:
            raw = open(file, encoding="utf-8").read()  # noqa: SIM115
        except OSError as exc:
            raise KeyError_(f"{what}: expected a readable key file, found {exc.strerror} at {file}") from None
        source = f"file {file}"
    keys = [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]
    if not keys:
        raise KeyError_(f"{what}: expected at least one key in {source or 'the configuration'}, "
                        "found none (create them with 'stepgate keys generate')")
    return keys


@dataclass(frozen=True)
class DataKey:
    kid: str
    aead: AESGCM


class KeyRing:
    """Signing keys (first signs, all verify) and AES-256-GCM data keys (first encrypts)."""

    def __init__(self, signing: list[str], data: list[str]) -> None:
        for k in signing:
            if len(k) < MIN_SIGNING_KEY_LENGTH:
                raise KeyError_(f"signing keys: expected at least {MIN_SIGNING_KEY_LENGTH} "
                                f"characters each, found one of {len(k)}")
        self.signing = signing
        self.data: list[DataKey] = []
        for k in data:
            try:
                raw = base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise KeyError_("data keys: expected 32 bytes in URL-safe base64 each "
                                "(create them with 'stepgate keys generate')")
            kid = hashlib.sha256(raw).hexdigest()[:8]
            self.data.append(DataKey(kid, AESGCM(raw)))
            if len(self.data) == 1:
                # Keys the hashes of delivered codes, so a copy of the store alone cannot
                # brute-force the million six-digit candidates.
                self.mac_key = hashlib.sha256(b"stepgate code mac\x00" + raw).digest()
        if not self.data:
            raise KeyError_("data keys: expected at least one")

    @classmethod
    def from_settings(cls, settings: KeySettings) -> KeyRing:
        return cls(_read(settings.env, settings.file, "signing keys"),
                   _read(settings.data_env, settings.data_file, "data keys"))

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


class AdminKeyError(Exception):
    pass


def load_admin_key(settings: Settings) -> bytes | None:
    """The admin API's bearer key from the environment or a file, or None when the admin
    API is off."""
    key = ""
    if settings.admin_key_env:
        key = os.environ.get(settings.admin_key_env, "").strip()
    if not key and settings.admin_key_file is not None:
        try:
            key = settings.admin_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminKeyError(f"admin.key_file: expected a readable file, found "
                                f"{exc.strerror} at {settings.admin_key_file}") from None
    if not key:
        return None
    if len(key) < MIN_KEY_LENGTH:
        raise AdminKeyError(f"admin key: expected at least {MIN_KEY_LENGTH} characters, "
                            f"found {len(key)}")
    return key.encode()
