"""The JSON Schemas agree with the loader: the example files are valid, every key and every
choice the loader knows is in the schema (and nothing else), the schema's defaults are the
loader's, and documents the loader rejects the schema rejects too."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from gateway.cli import main
from gateway.config.schema import DIALECT, config_schema, policies_schema

from ..conftest import ROOT
from .documents import CONFIG, CONFIG_PROBE, POLICY, outcome, write

CONFIG_SCHEMA = config_schema()
POLICIES_SCHEMA = policies_schema()
Path_ = tuple[Any, ...]


def valid(schema: dict[str, Any], doc: Any) -> bool:
    """The verdict, which a draft-07 engine (the YAML language server's) reaches too."""
    verdict = Draft202012Validator(schema).is_valid(doc)
    assert Draft7Validator(schema).is_valid(doc) == verdict
    return verdict


# ---------------------------------------------------------------------------- walking

def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return _resolve(root["$defs"][node["$ref"].rsplit("/", 1)[1]], root)
    if "properties" not in node:
        for branch in node.get("anyOf", []):
            if "properties" in branch:
                return branch
    return node


def _items(node: dict[str, Any]) -> dict[str, Any]:
    return node.get("items") or next(b["items"] for b in node["anyOf"] if "items" in b)


def mappings(doc: Any, node: dict[str, Any], root: dict[str, Any],
             at: Path_ = ()) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """Every mapping in ``doc`` with the (resolved) schema that describes it."""
    node = _resolve(node, root)
    if isinstance(doc, dict):
        yield at, node
        for key, value in doc.items():
            child = node.get("properties", {}).get(key)
            if child is None and isinstance(node.get("additionalProperties"), dict):
                child = node["additionalProperties"]
            if child is not None:
                yield from mappings(value, child, root, (*at, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            if isinstance(value, dict):
                yield from mappings(value, _items(node), root, (*at, i))


def edited(doc: Any, at: Path_, key: str, value: Any = None, delete: bool = False) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for step in at:
        node = node[step]
    if delete:
        node.pop(key, None)
    else:
        node[key] = value
    return out


def cases() -> Iterator[tuple[str, Any, Path_, dict[str, Any]]]:
    """Each mapping once: the probe variant adds only identity.basic's own mappings."""
    seen: set[tuple[str, Path_]] = set()
    for kind, doc, schema in (("config", CONFIG, CONFIG_SCHEMA),
                              ("config", CONFIG_PROBE, CONFIG_SCHEMA),
                              ("policy", POLICY, POLICIES_SCHEMA)):
        for at, node in mappings(doc, schema, schema):
            if (kind, at) not in seen:
                seen.add((kind, at))
                yield kind, doc, at, node


CASES = list(cases())


SIMPLE = {"rules": [{"name": "a", "match": {"paths": ["/a"]}, "action": "allow"}]}


def load(tmp_path: Path, kind: str, doc: Any, policy: Any = None) -> tuple[str, Any]:
    if kind == "config":
        return outcome(write(tmp_path, doc, policy))
    return outcome(write(tmp_path, CONFIG, doc))


def schema_of(kind: str) -> dict[str, Any]:
    return CONFIG_SCHEMA if kind == "config" else POLICIES_SCHEMA


def test_the_documents_reach_every_part_of_the_schemas(tmp_path: Path) -> None:
    for kind, doc in (("config", CONFIG), ("config", CONFIG_PROBE), ("policy", POLICY)):
        assert load(tmp_path, kind, doc)[0] == "ok", load(tmp_path, kind, doc)
        assert valid(schema_of(kind), doc)
    reached = {(kind, at) for kind, _, at, _ in CASES}
    for section in ("upstream", "keys", "admin", "audit", "paths", "limits", "throttle",
                    "manage", "evidence_headers", "notify"):
        assert ("config", (section,)) in reached
    assert ("config", ("identity", "basic", "upstream_probe")) in reached
    assert ("config", ("factors", "email", "deliver", "smtp")) in reached
    assert ("config", ("factors", "pager", "deliver", "webhook")) in reached
    assert ("policy", ("rules", 0, "match", "json", "$.amount")) in reached
    assert ("policy", ("rules", 1, "require", "factors")) in reached


# ---------------------------------------------------------------------------- the examples

def test_schemas_are_draft_2020_12() -> None:
    for schema in (CONFIG_SCHEMA, POLICIES_SCHEMA):
        assert schema["$schema"] == DIALECT
        Draft202012Validator.check_schema(schema)


def test_example_config_and_every_policy_file_validate() -> None:
    assert valid(CONFIG_SCHEMA, yaml.safe_load((ROOT / "config.example.yaml").read_text()))
    files = sorted((ROOT / "policies").glob("*.yaml"))
    assert files
    for file in files:
        errors = [e.message for e in Draft202012Validator(POLICIES_SCHEMA).iter_errors(
            yaml.safe_load(file.read_text()))]
        assert errors == [], (file, errors)


# Keywords that mean the same in draft-07 and in 2020-12: editors whose YAML language server
# validates with draft-07 semantics (yaml-language-server, VS Code) then check everything.
SHARED_KEYWORDS = {
    "$schema", "$id", "$ref", "$defs", "title", "description", "default", "format", "type",
    "enum", "const", "pattern", "minLength", "minimum", "maximum", "minItems", "uniqueItems",
    "items", "properties", "additionalProperties", "propertyNames", "minProperties",
    "required", "anyOf", "oneOf", "allOf", "not", "if", "then", "else"}
SUBSCHEMA = {"items", "additionalProperties", "propertyNames", "not", "if", "then", "else"}


def keywords(schema: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        yield key, schema
        if key in ("properties", "$defs"):
            for sub in value.values():
                yield from keywords(sub)
        elif key in ("anyOf", "oneOf", "allOf"):
            for sub in value:
                yield from keywords(sub)
        elif key in SUBSCHEMA:
            yield from keywords(value)


@pytest.mark.parametrize("schema", [CONFIG_SCHEMA, POLICIES_SCHEMA], ids=["config", "policies"])
def test_only_keywords_draft_7_shares(schema: dict[str, Any]) -> None:
    used = set()
    for key, node in keywords(schema):
        used.add(key)
        if key == "$ref":
            assert set(node) == {"$ref"}  # draft-07 ignores a $ref's siblings
        if key == "items":
            assert isinstance(node["items"], dict)  # one schema for every item, as in draft-07
    assert used <= SHARED_KEYWORDS, used - SHARED_KEYWORDS


@pytest.mark.parametrize("kind", ["config", "policies"])
def test_schema_command_prints_the_schema(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", kind]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == (CONFIG_SCHEMA if kind == "config" else POLICIES_SCHEMA)


# ---------------------------------------------------------------------------- cross-checks

UNKNOWN = "zz_unknown"
# An unknown key of a mapping, or an unknown operator of a condition.
LISTED = re.compile(rf"(?:unknown key '{UNKNOWN}'; |\.{UNKNOWN}: )expected one of (.*?)"
                    rf"(?:, found '{UNKNOWN}')?$")
CLOSED = [(kind, doc, at, node) for kind, doc, at, node in CASES
          if node.get("additionalProperties") is False
          and at[-1:] != ("factors",)]  # require.factors is a list or {all_of}, not a section


@pytest.mark.parametrize("kind,doc,at,node", CLOSED,
                         ids=[f"{k}:{'.'.join(map(str, at)) or '(top)'}" for k, _, at, _ in CLOSED])
def test_unknown_keys_rejected_by_both_and_known_keys_agree(
        tmp_path: Path, kind: str, doc: Any, at: Path_, node: dict[str, Any]) -> None:
    bad = edited(doc, at, UNKNOWN, 1)
    assert not valid(schema_of(kind), bad)
    result, errors = load(tmp_path, kind, bad)
    assert result == "errors"
    listed = [m.group(1) for e in errors if (m := LISTED.search(e))]
    assert len(listed) == 1, errors
    assert sorted(re.findall(r"'([^']*)'", listed[0])) == sorted(node["properties"])


def _choices(kind: str, doc: Any) -> Iterator[tuple[str, Any, Path_, str, list[str]]]:
    for k, d, at, node in CASES:
        if k == kind and d is doc:
            for key, prop in node.get("properties", {}).items():
                if "enum" in prop:
                    yield kind, doc, at, key, prop["enum"]


CHOICES = [*_choices("config", CONFIG), *_choices("config", CONFIG_PROBE),
           *_choices("policy", POLICY)]


@pytest.mark.parametrize("kind,doc,at,key,enum", CHOICES,
                         ids=[f"{k}:{'.'.join(map(str, (*at, key)))}" for k, _, at, key, _ in CHOICES])
def test_choices_agree(tmp_path: Path, kind: str, doc: Any, at: Path_, key: str,
                       enum: list[str]) -> None:
    bad = edited(doc, at, key, "zz_bad")
    assert not valid(schema_of(kind), bad)
    result, errors = load(tmp_path, kind, bad)
    pattern = re.compile(rf"(?:: |\.){re.escape(key)}: expected one of (.*), found 'zz_bad'$")
    listed = [m.group(1) for e in errors if (m := pattern.search(e))]
    assert len(listed) == 1, errors
    assert re.findall(r"'([^']*)'", listed[0]) == enum


def _defaults() -> Iterator[tuple[str, Any, Path_, str, Any]]:
    for kind, doc, at, node in CASES:
        for key, prop in node.get("properties", {}).items():
            if "default" in prop:
                yield kind, doc, at, key, prop["default"]


DEFAULTS = list(_defaults())


@pytest.mark.parametrize("kind,doc,at,key,default", DEFAULTS,
                         ids=[f"{k}:{'.'.join(map(str, (*at, key)))}" for k, _, at, key, _ in DEFAULTS])
def test_schema_defaults_are_the_loaders(tmp_path: Path, kind: str, doc: Any, at: Path_,
                                         key: str, default: Any) -> None:
    absent = load(tmp_path, kind, edited(doc, at, key, delete=True))
    written = load(tmp_path, kind, edited(doc, at, key, default))
    assert absent == written
    assert absent[0] == "ok" or at == ("rules", 1, "require")  # session rule: binding given


# ---------------------------------------------------------------------------- examples

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:9000"}}
INVALID_CONFIGS = [
    {},
    {**UPSTREAM, "colour": "blue"},
    {**UPSTREAM, "workers": 0},
    {"upstream": {"url": "ftp://x"}},
    {"upstream": {"url": "http://x", "read_timeout": "soon"}},
    {**UPSTREAM, "store": "redis://cache"},
    {**UPSTREAM, "manage": {"binding": "sesion"}},
    {**UPSTREAM, "identity": {"basic": {}}},
    {**UPSTREAM, "identity": {"basic": {"verify": "backend", "upstream_probe": {"path": "/me"}}}},
    {**UPSTREAM, "factors": {"sms": {"deliver": {"command": ["x"],
                                                 "webhook": {"url": "http://h"}}}}},
    {**UPSTREAM, "factors": {"sms": {"deliver": {"command": ["x"]}, "digits": 4}}},
    {**UPSTREAM, "factors": {"Bad Name": {"deliver": {"command": ["x"]}}}},
    {**UPSTREAM, "limits": {"header_timeout": "1h"}},
]
VALID_CONFIGS = [
    UPSTREAM,
    {**UPSTREAM, "paths": None, "keys": None},
    {"upstream": {"url": "HTTPS://u.example/", "read_timeout": 30}, "max_body": 4096},
    {**UPSTREAM, "factors": {"sms": {"deliver": {"command": "./send"}}}},
]


@pytest.mark.parametrize("doc", INVALID_CONFIGS)
def test_invalid_configs_rejected_by_both(tmp_path: Path, doc: dict[str, Any]) -> None:
    assert not valid(CONFIG_SCHEMA, doc)
    assert load(tmp_path, "config", doc, SIMPLE)[0] == "errors"


@pytest.mark.parametrize("doc", VALID_CONFIGS)
def test_valid_configs_accepted_by_both(tmp_path: Path, doc: dict[str, Any]) -> None:
    assert valid(CONFIG_SCHEMA, doc)
    assert load(tmp_path, "config", doc, SIMPLE)[0] == "ok"


def rule(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "r", "match": {"paths": ["/a"]},
                            "require": {"factors": ["totp"]}}
    return {**base, **changes}


INVALID_RULES = [
    rule(require={"factors": ["totp"], "binding": "sesion"}),
    rule(require={"factors": ["totp"], "binding": "route", "scope": "s"}),
    rule(require={"factors": ["totp"], "uses": 2}),
    rule(require={"factors": []}),
    rule(require={"factors": ["totp", "totp"]}),
    rule(require={"factors": {"any_of": ["totp"]}}),
    rule(require={"factors": ["totp"], "ttl": "1h"}),
    rule(action="allow"),
    {"name": "r", "match": {"paths": ["/a"]}},
    {"name": "r", "match": {"paths": ["/a"]}, "action": "require"},
    {"match": {"paths": ["/a"]}, "action": "allow"},
    rule(match={"paths": ["a/b"]}),
    rule(match={"paths": ["/a/**/b"]}),
    rule(match={"paths": ["/a/../b"]}),
    rule(match={"methods": ["get"]}),
    rule(match={"host": "x"}),
    rule(match={"json": {"amount": {"gt": 1}}}),
    rule(match={"json": {"$.amount": {"greater": 1}}}),
    rule(match={"json": {"$.amount": {"gt": "big"}}}),
    rule(match={"query": {}}),
    rule(extra=1),
    "not a mapping",
]
VALID_RULES = [
    rule(),
    rule(match=None, require={"factors": {"all_of": ["totp", "recovery"]}, "binding": "session",
                              "scope": "s", "ttl": 300}),
    rule(match={"methods": "GET", "paths": "/", "query": {"q": 1}, "headers": {"H": True}}),
    {"name": "r.1", "match": {"paths": ["/{a}/{b}/**"]}, "action": "deny"},
]


@pytest.mark.parametrize("data", INVALID_RULES)
def test_invalid_rules_rejected_by_both(tmp_path: Path, data: Any) -> None:
    assert not valid(POLICIES_SCHEMA, {"rules": [data]})
    assert load(tmp_path, "policy", {"rules": [data]})[0] == "errors"


@pytest.mark.parametrize("data", VALID_RULES)
def test_valid_rules_accepted_by_both(tmp_path: Path, data: Any) -> None:
    assert valid(POLICIES_SCHEMA, {"rules": [data]})
    assert load(tmp_path, "policy", {"rules": [data]})[0] == "ok"


def _keys(node: dict[str, Any], root: dict[str, Any], at: Path_ = ()) -> Iterator[Path_]:
    node = _resolve(node, root)
    for key, child in node.get("properties", {}).items():
        yield (*at, key)
        yield from _keys(child, root, (*at, key))
    if isinstance(node.get("additionalProperties"), dict):
        yield from _keys(node["additionalProperties"], root, (*at, "*"))


def test_every_key_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [".".join(map(str, path)) for schema in (CONFIG_SCHEMA, POLICIES_SCHEMA)
               for path in _keys(schema, schema)
               if not re.search(rf"(?<![\w-]){re.escape(str(path[-1]))}(?![\w-])", text)]
    assert missing == []
