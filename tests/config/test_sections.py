"""One validator per section, enumerations from the registry, defaults from the settings
dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import registry
from gateway.config.fields import Group, defaults_of, format_duration, format_size
from gateway.config.load import check_settings
from gateway.config.sections import SECTIONS, auth, decisions, server, state
from gateway.config.settings import ChannelSettings, Settings
from gateway.config.validate import listing

from .documents import CONFIG, write

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:9000"}}
SIMPLE = {"rules": [{"name": "a", "match": {"paths": ["/a"]}, "action": "allow"}]}


def errors(tmp_path: Path, config: dict, policy: dict = SIMPLE) -> tuple[str, ...]:
    return check_settings(write(tmp_path, config, policy)).errors


def test_one_validator_per_section_in_dependency_order() -> None:
    assert [s.name for s in SECTIONS] == [
        "listen", "http", "upstream", "paths", "limits", "evidence_headers", "forward_auth",
        "operations",
        "store", "redis",
        "keys", "admin", "audit", "identity", "factors", "notify", "throttle", "manage", "ttls",
        "policies"]


def test_every_top_level_key_belongs_to_one_section() -> None:
    owners: dict[str, str] = {}
    for section in SECTIONS:
        for key in section.schema():
            assert key not in owners, (key, owners.get(key), section.name)
            owners[key] = section.name


def test_every_setting_can_be_configured(tmp_path: Path) -> None:
    s = check_settings(write(tmp_path, CONFIG)).settings
    assert s is not None
    untouched = Settings(source=s.source, upstream=s.upstream, rules=s.rules)
    same = [f.name for f in dataclasses.fields(Settings)
            if getattr(s, f.name) == getattr(untouched, f.name)]
    assert same == ["source", "upstream", "rules"]


GROUPS = [g for module in (server, state, auth, decisions)
          for g in vars(module).values() if isinstance(g, Group)]


@pytest.mark.parametrize("group", GROUPS, ids=[f"{g.cls.__name__}:{g.fields[0].key}"
                                               for g in GROUPS])
def test_defaults_are_the_dataclasses(group: Group) -> None:
    own = defaults_of(group.cls)
    for f in group.fields:
        if f.name in own and not f.required and f.derive is None:
            assert group.default(f) == own[f.name], f.key


def test_a_changed_dataclass_default_reaches_the_loader(tmp_path: Path) -> None:
    s = check_settings(write(tmp_path, UPSTREAM, SIMPLE)).settings
    assert s is not None
    assert (s.listen_host, s.listen_port) == (Settings.listen_host, Settings.listen_port)
    assert s.store_url == f"sqlite:///{tmp_path / 'stepgate.db'}"
    assert s.upstream.pool_timeout == 5.0 and s.limits.connections_per_client == 256


def test_channel_kinds_come_from_the_registry(tmp_path: Path) -> None:
    found = errors(tmp_path, {**UPSTREAM, "factors": {"sms": {"deliver": {}}}})
    assert f"expected exactly one of {listing(registry.CHANNEL_KINDS)}" in found[0]
    assert listing(registry.CHANNEL_KINDS) == "'command', 'webhook' or 'smtp'"
    assert ChannelSettings.__annotations__["kind"] == "ChannelKind"


def test_identity_sources_come_from_the_registry(tmp_path: Path) -> None:
    found = errors(tmp_path, {**UPSTREAM, "identity": {"basic": {}}})
    assert found == (f"{tmp_path / 'config.yaml'}:2: identity.basic: expected exactly one of "
                     "'htpasswd', 'upstream_probe' or 'verify: backend', found nothing",)
    required = {"rules": [{"name": "r", "match": {"paths": ["/a"]},
                           "require": {"factors": ["totp"]}}]}
    assert errors(tmp_path, UPSTREAM, required)[0].endswith(
        f"identity: expected {listing(registry.IDENTITY_SOURCES)} because rules require a "
        "second factor, found no identity source")


def test_store_schemes_come_from_the_registry(tmp_path: Path) -> None:
    found = errors(tmp_path, {**UPSTREAM, "store": "redis://cache"})
    assert found == (f"{tmp_path / 'config.yaml'}:1: store: expected a URL starting with "
                     "'sqlite:///' or 'postgresql://', found 'redis://cache'; Redis holds only "
                     "the hot state: name it under 'redis' and a SQL store here, like "
                     f"{registry.STORE_EXAMPLES['postgresql']!r}",)
    assert set(registry.STORE_EXAMPLES) == set(registry.STORE_URL_SHAPES) == set(
        registry.STORE_SCHEMES)


def test_address_defaults_by_channel_name(tmp_path: Path) -> None:
    factors = {name: {"deliver": {"command": ["x"]}} for name in ("sms", "email", "pager")}
    s = check_settings(write(tmp_path, {**UPSTREAM, "factors": factors}, SIMPLE)).settings
    assert s is not None
    assert {c.name: c.address for c in s.channels} == {
        **registry.DEFAULT_ADDRESS, "pager": defaults_of(ChannelSettings)["address"]}


@pytest.mark.parametrize("seconds,text", [(2.0, "2s"), (120.0, "2m"), (3600.0, "1h"),
                                          (86400.0, "1d"), (0.25, "250ms"), (90.0, "90s")])
def test_durations_written_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_sizes_written_back() -> None:
    assert [format_size(n) for n in (1024 * 1024, 65536, 1000)] == ["1MiB", "64KiB", "1000"]


def test_sections_that_validated_are_known_even_when_others_fail(tmp_path: Path) -> None:
    checked = check_settings(write(tmp_path, {**UPSTREAM, "workers": 0,
                                              "keys": {"env": "MY_KEYS"}}, SIMPLE))
    assert checked.settings is None
    assert "listen" not in checked.valid and "keys" in checked.valid
    assert checked.so_far().keys.env == "MY_KEYS"
