"""``store`` and ``redis`` URLs: the shapes the loader and the JSON Schema accept, each wrong
part named with its key and line, parameters checked by name and type, passwords never
shown, and the password variables and files that ``stepgate check`` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from gateway.cli import main
from gateway.config.load import check_settings
from gateway.config.schema import config_schema

from ..conftest import DATA, SIGNING

SCHEMA = Draft202012Validator(config_schema())
PG = "postgresql://stepgate@db.internal:5432/stepgate"


def write(folder: Path, store: str | None = None, redis: str | None = None,
          prefix: str | None = None) -> Path:
    """A configuration whose ``store`` is on line 3, ``redis`` on 4, ``redis_prefix`` on 5."""
    (folder / "p.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "a", "match": {"paths": ["/x"]}, "action": "allow"}]}))
    lines = ['upstream: {url: "http://127.0.0.1:1"}', "policies: p.yaml"]
    for key, value in (("store", store), ("redis", redis), ("redis_prefix", prefix)):
        lines.append(f"# no {key}" if value is None else
                     f"{key}: {yaml.safe_dump(value).splitlines()[0]}")
    path = folder / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def problems(folder: Path, **keys: str) -> list[str]:
    path = write(folder, **keys)
    return [p.removeprefix(f"{path}:") for p in check_settings(path).errors]


VALID_STORES = [
    "sqlite:///stepgate.db",
    PG,
    "postgresql://stepgate@db.internal/stepgate",
    "postgresql://stepgate:s%40cret@10.0.0.5:6432/stepgate",
    "postgresql://stepgate@[::1]:5432/stepgate",
    f"{PG}?pool_min=2&pool_max=20&sslmode=verify-full",
    f"{PG}?pool_min=0&pool_max=1",
    f"{PG}?password_env=STEPGATE_DB_PASSWORD",
    f"{PG}?sslmode=require&password_file=/run/secrets/db",
    f"{PG}?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem&search_path=stepgate"
    "&application_name=gw1&target_session_attrs=read-write",
]


@pytest.mark.parametrize("url", VALID_STORES)
def test_valid_store_urls(tmp_path: Path, url: str) -> None:
    checked = check_settings(write(tmp_path, store=url))
    assert checked.errors == ()
    assert checked.settings is not None
    if url.startswith("postgresql://"):
        assert checked.settings.store_url == url
    assert SCHEMA.is_valid({"upstream": {"url": "http://u"}, "store": url})


# (url, the problem after 'store: '; several when several parts are wrong)
INVALID_STORES: list[tuple[str, list[str]]] = [
    ("postgres://stepgate@db:5432/stepgate",
     ["expected a URL starting with 'sqlite:///' or 'postgresql://', found "
      "'postgres://stepgate@db:5432/stepgate', did you mean 'postgresql'?"]),
    ("mysql://u@h/db",
     ["expected a URL starting with 'sqlite:///' or 'postgresql://', found 'mysql://u@h/db'"]),
    ("sqlite://stepgate.db",
     ["expected 'sqlite:///' and a path, like 'sqlite:///stepgate.db', found "
      "'sqlite://stepgate.db'"]),
    ("postgresql://db.internal:5432/stepgate",
     ["expected a user name before '@', as in postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, "
      "found none in 'postgresql://db.internal:5432/stepgate'"]),
    ("postgresql://stepgate@:5432/stepgate",
     ["expected a host after '@', as in postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, found "
      "none in 'postgresql://stepgate@:5432/stepgate'"]),
    ("postgresql://stepgate@db:99999/stepgate",
     ["expected a port from 1 to 65535 after the host, found '99999' in "
      "'postgresql://stepgate@db:99999/stepgate'"]),
    ("postgresql://stepgate@db:port/stepgate",
     ["expected a port from 1 to 65535 after the host, found 'port' in "
      "'postgresql://stepgate@db:port/stepgate'"]),
    ("postgresql://stepgate@db:5432",
     ["expected a database name after the host, as in "
      "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, found none in "
      "'postgresql://stepgate@db:5432'"]),
    ("postgresql://stepgate@db:5432/a/b", ["expected one database name after the host, found 'a/b'"]),
    (f"{PG}?pool_mx=3", ["unknown parameter 'pool_mx', did you mean 'pool_max'?"]),
    (f"{PG}?colour=blue",
     [f"unknown parameter 'colour' in '{PG}?colour=blue'; expected one of 'pool_min', "
      "'pool_max', 'sslmode', 'password_env', 'password_file', 'sslrootcert', 'sslcert', "
      "'sslkey', 'sslcrl', 'target_session_attrs', 'application_name' or 'search_path'"]),
    (f"{PG}?sslrootcrt=ca.pem", ["unknown parameter 'sslrootcrt', did you mean 'sslrootcert'?"]),
    (f"{PG}?target_session_attrs=primry",
     ["parameter 'target_session_attrs': expected one of 'any', 'primary', 'standby', "
      "'read-write', 'read-only' or 'prefer-standby', found 'primry', did you mean 'primary'?"]),
    (f"{PG}?pool_max=ten", ["parameter 'pool_max': expected an integer >= 1, found 'ten'"]),
    (f"{PG}?pool_max=0", ["parameter 'pool_max': expected an integer >= 1, found '0'"]),
    (f"{PG}?pool_min=-1", ["parameter 'pool_min': expected an integer >= 0, found '-1'"]),
    (f"{PG}?pool_min=9&pool_max=4", ["parameter 'pool_min': expected at most pool_max (4), found 9"]),
    (f"{PG}?pool_max=4&pool_max=5",
     [f"parameter 'pool_max': expected it once, found it again in '{PG}?pool_max=4&pool_max=5'"]),
    (f"{PG}?sslmode=requre",
     ["parameter 'sslmode': expected one of 'disable', 'allow', 'prefer', 'require', "
      "'verify-ca' or 'verify-full', found 'requre', did you mean 'require'?"]),
    (f"{PG}?password_env=", ["parameter 'password_env': expected a value after 'password_env=', "
                             "found none"]),
    (f"{PG}?password_env=DB-PASSWORD",
     ["parameter 'password_env': expected an environment variable name like "
      "'STEPGATE_DB_PASSWORD', found 'DB-PASSWORD'"]),
    (f"{PG}?password_env=A&password_file=f",
     ["expected one source of the password, found password_env and password_file"]),
    ("redis://cache:6379/0",
     ["expected a URL starting with 'sqlite:///' or 'postgresql://', found "
      "'redis://cache:6379/0'; Redis holds only the hot state: name it under 'redis' and a "
      f"SQL store here, like {PG!r}"]),
    # Every wrong part at once.
    ("postgresql://@db:0/?pool_mx=1&sslmode=no",
     ["expected a user name before '@', as in postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, "
      "found none in 'postgresql://@db:0/?pool_mx=1&sslmode=no'",
      "expected a port from 1 to 65535 after the host, found '0' in "
      "'postgresql://@db:0/?pool_mx=1&sslmode=no'",
      "expected a database name after the host, as in "
      "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, found none in "
      "'postgresql://@db:0/?pool_mx=1&sslmode=no'",
      "unknown parameter 'pool_mx', did you mean 'pool_max'?",
      "parameter 'sslmode': expected one of 'disable', 'allow', 'prefer', 'require', "
      "'verify-ca' or 'verify-full', found 'no'"]),
]


@pytest.mark.parametrize(("url", "why"), INVALID_STORES, ids=[u for u, _ in INVALID_STORES])
def test_invalid_store_urls_name_the_part(tmp_path: Path, url: str, why: list[str]) -> None:
    assert problems(tmp_path, store=url) == [f"3: store: {w}" for w in why]


@pytest.mark.parametrize("url", [u for u, _ in INVALID_STORES
                                 if not any(s in u for s in ("pool_min=9", "99999", "pool_max=5",
                                                             "password_file=f"))])
def test_the_schema_refuses_them_too(url: str) -> None:
    # A pool_min above pool_max, a five-digit port above 65535, a parameter given twice and
    # two sources of a password only the loader sees.
    assert not SCHEMA.is_valid({"upstream": {"url": "http://u"}, "store": url})


def test_a_store_that_is_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text() + "store: 5432\n")
    assert [p.removeprefix(f"{path}:") for p in check_settings(path).errors] == [
        f"6: store: expected a store URL like 'sqlite:///stepgate.db' or {PG!r}, found the "
        "number 5432"]


def test_a_password_in_a_url_is_never_shown(tmp_path: Path) -> None:
    found = problems(tmp_path, store="postgresql://stepgate:hunter2@db:99999/stepgate",
                     redis="redis://:hunter3@cache:6379/x")
    assert found == [
        "3: store: expected a port from 1 to 65535 after the host, found '99999' in "
        "'postgresql://stepgate:***@db:99999/stepgate'",
        "4: redis: expected a database number after the host, as in "
        "'redis://cache.internal:6379/0', found 'x'"]
    found = problems(tmp_path, store="postgresql://stepgate:hunter2@db:5432/s?password_env=P")
    assert found == ["3: store: expected one source of the password, found a password in the "
                     "URL and password_env"]


VALID_REDIS = [
    "redis://127.0.0.1:6379/0",
    "redis://cache.internal",
    "redis://cache.internal:6379",
    "rediss://cache.internal:6380/3",
    "redis://:s3cret@cache:6379/1",
    "redis://default:s3cret@cache:6379/1",
    "redis://[::1]:6379/0",
    "redis://cache:6379/0?password_env=REDIS_PASSWORD",
    "rediss://cache:6380/0?password_file=/run/secrets/redis",
    "rediss://cache:6380/0?ssl_ca_certs=/etc/ssl/ca.pem&ssl_cert_reqs=required",
]


@pytest.mark.parametrize("url", VALID_REDIS)
def test_valid_redis_urls(tmp_path: Path, url: str) -> None:
    checked = check_settings(write(tmp_path, redis=url))
    assert checked.errors == ()
    assert checked.settings is not None
    assert checked.settings.redis_url == url
    assert checked.settings.redis_prefix == "stepgate:"
    assert SCHEMA.is_valid({"upstream": {"url": "http://u"}, "redis": url})


INVALID_REDIS: list[tuple[str, str]] = [
    ("redis:/cache", "expected a URL starting with 'redis://' or 'rediss://', found "
                     "'redis:/cache'"),
    ("reddis://cache", "expected a URL starting with 'redis://' or 'rediss://', found "
                       "'reddis://cache', did you mean 'redis'?"),
    ("postgresql://u@h/db", "expected a URL starting with 'redis://' or 'rediss://', found "
                            "'postgresql://u@h/db'"),
    ("redis://:6379/0", "expected a host, as in redis://[:PASSWORD@]HOST[:PORT][/N], found "
                        "none in 'redis://:6379/0'"),
    ("redis://cache:70000/0", "expected a port from 1 to 65535 after the host, found '70000' in "
                              "'redis://cache:70000/0'"),
    ("redis://cache:6379/zero", "expected a database number after the host, as in "
                                "'redis://cache.internal:6379/0', found 'zero'"),
    ("redis://cache/0?password_fille=x", "unknown parameter 'password_fille', did you mean "
                                         "'password_file'?"),
    ("redis://cache/0?pool_max=3", "unknown parameter 'pool_max' in "
                                   "'redis://cache/0?pool_max=3'; expected one of "
                                   "'password_env', 'password_file', 'ssl_ca_certs', "
                                   "'ssl_certfile', 'ssl_keyfile' or 'ssl_cert_reqs'"),
    ("rediss://cache/0?ssl_cert_reqs=yes", "parameter 'ssl_cert_reqs': expected one of 'none', "
                                           "'optional' or 'required', found 'yes'"),
    ("redis://:pw@cache/0?password_file=f", "expected one source of the password, found a "
                                            "password in the URL and password_file"),
]


@pytest.mark.parametrize(("url", "why"), INVALID_REDIS, ids=[u for u, _ in INVALID_REDIS])
def test_invalid_redis_urls_name_the_part(tmp_path: Path, url: str, why: str) -> None:
    assert problems(tmp_path, redis=url) == [f"4: redis: {why}"]
    if "70000" not in url and "password_file=f" not in url:
        assert not SCHEMA.is_valid({"upstream": {"url": "http://u"}, "redis": url})


def test_redis_prefix(tmp_path: Path) -> None:
    checked = check_settings(write(tmp_path, redis="redis://cache/0", prefix="bank:"))
    assert checked.settings is not None and checked.settings.redis_prefix == "bank:"
    assert problems(tmp_path, redis="redis://cache/0", prefix="a b") == [
        "5: redis_prefix: expected a key prefix without spaces, like 'stepgate:', found 'a b'"]


def test_a_misspelt_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text() + "reddis: redis://cache/0\n")
    assert [p.removeprefix(f"{path}:") for p in check_settings(path).errors] == [
        "6: unknown key 'reddis', did you mean 'redis'?"]


def test_password_files_are_relative_to_the_configuration(tmp_path: Path) -> None:
    checked = check_settings(write(
        tmp_path, store=f"{PG}?password_file=secrets/db%20pw&sslrootcert=ca.pem&sslmode=require",
        redis="redis://cache/0?password_file=redis.pw"))
    assert checked.settings is not None
    assert checked.settings.store_url == (f"{PG}?password_file={tmp_path}/secrets/db%20pw"
                                          f"&sslrootcert={tmp_path}/ca.pem&sslmode=require")
    assert checked.settings.redis_url == f"redis://cache/0?password_file={tmp_path}/redis.pw"


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(["check", "--config", str(path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPGATE_KEYS", SIGNING)
    monkeypatch.setenv("STEPGATE_DATA_KEYS", DATA)


@pytest.mark.usefixtures("keys")
def test_check_names_the_file_line_and_key(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, store=f"{PG}?pool_mx=3", redis="redis://cache:6379/x")
    code, out = check(path, capsys)
    assert code == 2
    assert f"  - {path}:3: store: unknown parameter 'pool_mx', did you mean 'pool_max'?" in out
    assert (f"  - {path}:4: redis: expected a database number after the host, as in "
            "'redis://cache.internal:6379/0', found 'x'") in out


@pytest.mark.usefixtures("keys")
def test_check_reports_unreadable_password_files(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.pw").write_text("\n")
    path = write(tmp_path, store=f"{PG}?password_file=missing.pw",
                 redis="redis://cache/0?password_file=empty.pw")
    code, out = check(path, capsys)
    assert code == 2
    assert (f"  - {path}: store: expected a readable password file (parameter password_file), "
            f"found No such file or directory at {tmp_path}/missing.pw") in out
    assert (f"  - {path}: redis: expected a password in the file {tmp_path}/empty.pw "
            "(parameter password_file), found it empty") in out


@pytest.mark.usefixtures("keys")
def test_check_reports_unset_password_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SG_DB_PASSWORD", raising=False)
    path = write(tmp_path, store=f"{PG}?password_env=SG_DB_PASSWORD")
    code, out = check(path, capsys)
    assert code == 2
    assert (f"  - {path}: store: expected the password in environment variable SG_DB_PASSWORD "
            "(parameter password_env), found it unset or empty") in out
    monkeypatch.setenv("SG_DB_PASSWORD", "pw")
    (tmp_path / "redis.pw").write_text("pw\n")
    path = write(tmp_path, store=f"{PG}?password_env=SG_DB_PASSWORD",
                 redis="redis://cache/0?password_file=redis.pw")
    code, out = check(path, capsys)
    assert code == 0, out
