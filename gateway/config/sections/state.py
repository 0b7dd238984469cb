"""Sections about where state and secrets live: ``store`` with ``store_timeout``, ``keys``,
``admin`` and ``audit``.

Only the configuration is checked here; whether the keys it names really exist is checked
where they are read (gateway.keys), and ``stepgate check`` asks there too.
"""

from __future__ import annotations

from gateway.config.fields import Duration, Group, Text
from gateway.config.registry import STORE_EXAMPLES, store_url_pattern
from gateway.config.sections.base import Loading, Section, properties_of, read_group
from gateway.config.settings import KeySettings, Settings
from gateway.config.validate import Reader

SQLITE = "sqlite:///"

STORE = Group(Settings, (
    Text("store", attr="store_url", pattern=store_url_pattern(),
         expected="a store URL like " + " or ".join(repr(e) for e in STORE_EXAMPLES.values()),
         doc="the state store; a relative SQLite path is relative to this file"),
    Duration("store_timeout", maximum=60,
             doc="longest a store call may take; then 503 store-unavailable"),
))

KEYS = Group(KeySettings, (
    Text("env", doc="environment variable with the signing keys, comma- or line-separated; "
                    "the first signs, all verify"),
    Text("file", doc="file with the signing keys, read when the variable is unset (a file "
                      "written by 'stepgate keys generate --output' serves both lists)"),
    Text("data_env", doc="environment variable with the AES-256-GCM data keys; the first "
                         "encrypts"),
    Text("data_file", doc="file with the data keys, read when data_env's variable is unset"),
))

ADMIN = Group(Settings, (
    Text("key_env", attr="admin_key_env",
         doc="environment variable with the admin API's bearer key (at least 24 characters)"),
    Text("key_file", attr="admin_key_file", doc="file with the admin API's bearer key"),
))

AUDIT = Group(Settings, (
    Text("path", attr="audit_path", doc="a file, or '-' for standard output"),
))


def _store(r: Reader, ctx: Loading) -> None:
    values = STORE.read(r)
    url = values["store_url"]
    if url.startswith(SQLITE):
        url = SQLITE + str(ctx.resolve(url[len(SQLITE):]))
    ctx.values["store_url"] = url
    ctx.values["store_timeout"] = values["store_timeout"]


def _keys(r: Reader, ctx: Loading) -> None:
    keys = r.section("keys")
    if keys is None:
        return
    # A file given instead of the variable replaces the variable's default: keys are read
    # from one source per list (docs/operations.md, Keys).
    file = KEYS.one(keys, "file")
    data_file = KEYS.one(keys, "data_file")
    ctx.values["keys"] = KeySettings(
        env=KEYS.one(keys, "env", None) if file else KEYS.one(keys, "env"),
        file=ctx.resolve(file) if file else None,
        data_env=KEYS.one(keys, "data_env", None) if data_file else KEYS.one(keys, "data_env"),
        data_file=ctx.resolve(data_file) if data_file else None,
    )
    keys.finish()


def _admin(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "admin", ADMIN)
    if values is not None:
        file = values["admin_key_file"]
        ctx.values["admin_key_env"] = values["admin_key_env"]
        ctx.values["admin_key_file"] = ctx.resolve(file) if file else None


def _audit(r: Reader, ctx: Loading) -> None:
    values = read_group(r, "audit", AUDIT)
    if values is not None:
        path = values["audit_path"]
        ctx.values["audit_path"] = path if path == "-" else str(ctx.resolve(path))


SECTIONS = (
    Section("store", _store, lambda: properties_of(STORE)),
    Section("keys", _keys, lambda: {"keys": KEYS.schema()}),
    Section("admin", _admin, lambda: {"admin": ADMIN.schema()}),
    Section("audit", _audit, lambda: {"audit": AUDIT.schema()}),
)
