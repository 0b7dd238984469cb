"""Sections about where state and secrets live: ``store`` with ``store_timeout``, ``redis``
with ``redis_prefix``, ``keys``, ``admin`` and ``audit``.

Only the configuration is checked here; whether the keys it names really exist is checked
where they are read (gateway.keys), and ``stepgate check`` asks there too.
"""

from __future__ import annotations

from gateway.config.fields import Custom, Duration, Group, Text, anchored
from gateway.config.registry import HOT_URL_SHAPE, store_url_pattern
from gateway.config.sections.base import Loading, Section, properties_of, read_group
from gateway.config.settings import KeySettings, Settings
from gateway.config.urls import hot_expected, hot_url, store_expected, store_url, with_files_resolved
from gateway.config.validate import Reader

SQLITE = "sqlite:///"

STORE = Group(Settings, (
    Custom("store", attr="store_url", expected=store_expected(), convert=store_url,
           json={"type": "string", "minLength": 1, "pattern": anchored(store_url_pattern())},
           doc="the state store: sqlite:///PATH (relative to this file) or "
               "postgresql://USER@HOST:PORT/DB?pool_max=10&password_env=VAR"),
    Duration("store_timeout", maximum=60,
             doc="longest a store (or Redis) call may take; then 503 store-unavailable"),
))

REDIS = Group(Settings, (
    Custom("redis", attr="redis_url", expected=hot_expected(), convert=hot_url,
           json={"type": "string", "minLength": 1, "pattern": anchored(HOT_URL_SHAPE)},
           doc="optional: token uses, counters and lockouts in Redis, "
               "redis://HOST:PORT/N or rediss://...; the rest stays in the store"),
    Text("redis_prefix", pattern=r"[^\s]+", expected="a key prefix without spaces, like "
         "'stepgate:'", doc="the start of every Redis key the gateway writes"),
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
    else:
        url = with_files_resolved(url, ctx.resolve)
    ctx.values["store_url"] = url
    ctx.values["store_timeout"] = values["store_timeout"]


def _redis(r: Reader, ctx: Loading) -> None:
    values = REDIS.read(r)
    url = values["redis_url"]
    ctx.values["redis_url"] = None if url is None else with_files_resolved(url, ctx.resolve)
    ctx.values["redis_prefix"] = values["redis_prefix"]


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
    Section("redis", _redis, lambda: properties_of(REDIS)),
    Section("keys", _keys, lambda: {"keys": KEYS.schema()}),
    Section("admin", _admin, lambda: {"admin": ADMIN.schema()}),
    Section("audit", _audit, lambda: {"audit": AUDIT.schema()}),
)
