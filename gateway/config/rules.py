"""Policy rules as written: the validated, compiled rule set a configuration holds (loading
reports every error at once, each with file, rule, key, expected and found). The keys are
declared once (config.fields) for the loader and for ``stepgate schema policies``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from gateway.config.conditions import (
    ABSENT,
    JSON_PATH_NAMES,
    Condition,
    condition_map,
    condition_schema,
    conditions_schema,
    json_conditions,
)
from gateway.config.fields import (
    Choice,
    Duration,
    Group,
    Integer,
    Schema,
    Strings,
    Text,
    anchored,
    literal,
    obj,
)
from gateway.config.validate import MISSING, ConfigError, Reader

Action = Literal["allow", "deny", "require"]
ACTIONS: tuple[str, ...] = get_args(Action)
Binding = Literal["request", "route", "session"]
BINDINGS: tuple[str, ...] = get_args(Binding)
DEFAULT_BINDING: Binding = "request"
MAX_TTL = 15 * 60.0
DEFAULT_TTL = {"request": 120.0, "route": 120.0, "session": 300.0}
RULE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
METHOD = r"[A-Z][A-Z0-9_-]*"
FACTOR_NAME = r"[a-z][a-z0-9_-]*"
# A path pattern: literal segments, {name} for one segment, and '**' last for any rest.
# Written in the syntax Python and ECMA 262 share, so the JSON Schema uses it as is.
_PARAM = r"\{[A-Za-z_][A-Za-z0-9_]*\}"
_SEGMENT = rf"(?:{_PARAM}|(?!\.\.?(?:/|$))[^/{{}}*?#;\\%]+)"
PATH_PATTERN = rf"/(?:{_SEGMENT}(?:/{_SEGMENT})*(?:/\*\*)?|\*\*)?"
# Python's '$' also matches before a final newline; '\Z' is what ECMA 262's '$' means.
_PATH = re.compile(PATH_PATTERN.replace("$", r"\Z"))
_PARAM_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

__all__ = ["ABSENT", "ACTIONS", "BINDINGS", "Condition", "Requirement", "Rule", "RuleSet",
           "compile_path", "load_rules"]


@dataclass(frozen=True, slots=True)
class Requirement:
    factors: tuple[str, ...]
    all_of: bool
    binding: Binding
    ttl: float
    uses: int  # 0 means unlimited (session binding)
    scope: str
    max_age: float | None = None
    unenrolled: Literal["deny", "allow"] = "deny"
    challenge_style: Literal["secondfactor", "rfc9470"] = "secondfactor"
    acr_values: str = "urn:stepgate:2fa"


@dataclass(slots=True)
class Rule:
    name: str
    index: int
    source: str
    action: Action
    methods: frozenset[str] | None
    paths: tuple[str, ...]
    path_regex: re.Pattern[str] | None
    hosts: tuple[str, ...]
    query: tuple[tuple[str, tuple[Condition, ...]], ...]
    headers: tuple[tuple[str, tuple[Condition, ...]], ...]
    json: tuple[tuple[str, tuple[str | int, ...], tuple[Condition, ...]], ...]
    require: Requirement | None

    def describe(self) -> str:
        return f"rule #{self.index + 1} ('{self.name}') in {self.source}"


def compile_path(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    parts = pattern.split("/")[1:]
    out = []
    for i, seg in enumerate(parts):
        m = _PARAM_NAME.fullmatch(seg)
        if seg == "**" and i == len(parts) - 1:
            out.append("(?:/.*)?")
            continue
        if m:
            out.append(f"/(?P<{m.group(1)}>[^/]+)")
        else:
            out.append("/" + re.escape(seg))
    rx = "".join(out)
    if not pattern.endswith("/**") and pattern != "/":
        rx += "/?"  # a trailing slash must not step around a rule
    if pattern == "/":
        rx = "/"
    return re.compile("^" + rx + r"\Z", re.IGNORECASE if case_insensitive else 0)


def _check_pattern(pattern: str) -> bool:
    if not _PATH.fullmatch(pattern):
        return False
    names = _PARAM_NAME.findall(pattern)
    return len(names) == len(set(names))


FACTORS_EXPECTED = "a list of factor names, or {all_of: [...]}"
RULE = Group(Rule, (
    Text("name", pattern=RULE_NAME, expected="a name of letters, digits, '_', '.' or '-'",
         doc="unique across every policy file"),
    Choice("action", ACTIONS, optional=True,
           doc="allow or deny; a rule with a 'require' section needs none"),
))
MATCH = Group(Rule, (
    Strings("methods", item="upper-case HTTP methods", optional=True,
            check=lambda m: bool(re.fullmatch(METHOD, m)), item_pattern=anchored(METHOD),
            doc="absent: any method"),
    Strings("paths", item="path patterns starting with '/' ({name} for a segment, "
            "'**' last for any rest)", optional=True, check=_check_pattern,
            item_pattern=anchored(PATH_PATTERN),
            doc="matched on the canonical, percent-decoded path; absent: any path"),
    Strings("hosts", item="host names", optional=True,
            doc="exact names or '*.example.com'; port ignored"),
))
USES = Integer("uses", optional=True, doc="route binding: uses per token (default 1)")
REQUIRE = Group(Requirement, (
    Choice("binding", BINDINGS, derive=lambda _: DEFAULT_BINDING,
           doc="request: one request, single use; route: any request this rule matches, "
               "'uses' times; session: any request to rules sharing 'scope'"),
    Duration("ttl", maximum=MAX_TTL, optional=True,
             doc="token lifetime; default 2m, for session binding 5m"),
    USES,
    Text("scope", optional=True, doc="session binding only; default: the rule name"),
    Duration("max_age", doc="the factor must have been verified within this time "
             "(RFC 9470 max_age)"),
    Choice("unenrolled", literal(Requirement, "unenrolled"),
           doc="allow: forward users without an accepted factor (audited)"),
    Choice("challenge_style", literal(Requirement, "challenge_style"),
           doc="rfc9470 adds a Bearer error=\"insufficient_user_authentication\" challenge"),
    Text("acr_values", doc="acr_values of the rfc9470 challenge"),
))


def _factors(r: Reader, known_factors: set[str]) -> tuple[tuple[str, ...], bool]:
    factors_raw = r.raw("factors", None)
    all_of = False
    if isinstance(factors_raw, dict) and set(factors_raw) == {"all_of"}:
        all_of = True
        factors_raw = factors_raw["all_of"]
    if not (isinstance(factors_raw, list) and factors_raw
            and all(isinstance(f, str) for f in factors_raw)):
        r.error("factors", FACTORS_EXPECTED, r.data.get("factors", MISSING))
        return (), all_of
    unknown = [f for f in factors_raw if f not in known_factors]
    if unknown:
        r.error("factors", "factors the configuration enables ("
                + ", ".join(sorted(known_factors)) + ")", ", ".join(unknown))
    if len(set(factors_raw)) != len(factors_raw):
        r.error("factors", "each factor once", factors_raw)
    return tuple(factors_raw), all_of


def _requirement(r: Reader, name: str, known_factors: set[str]) -> Requirement | None:
    factors, all_of = _factors(r, known_factors)
    binding = REQUIRE.one(r, "binding")
    ttl = REQUIRE.one(r, "ttl", DEFAULT_TTL.get(binding or DEFAULT_BINDING))
    # A session token is unlimited within its ttl (uses 0); the others count their uses.
    session = binding == "session"
    uses = dataclasses.replace(USES, minimum=0 if session else 1).read(
        r, 0 if session else 1)
    if binding == "request" and uses not in (1, None):
        r.error("uses", "1 (a request-bound token is single use)", uses)
    scope = REQUIRE.one(r, "scope", name)
    if r.has("scope") and not session:
        r.error("scope", "no scope (only session binding shares a scope)", r.data["scope"])
    max_age = REQUIRE.one(r, "max_age")
    unenrolled = REQUIRE.one(r, "unenrolled")
    style = REQUIRE.one(r, "challenge_style")
    acr = REQUIRE.one(r, "acr_values")
    r.finish()
    if not r.ok:
        return None
    return Requirement(factors, all_of, binding, ttl, uses or 0, scope, max_age,
                       unenrolled, style, acr)


def _rule(data: Any, index: int, source: str, errors: list[str], known_factors: set[str],
          case_insensitive: bool) -> Rule | None:
    label = data.get("name") if isinstance(data, dict) else None
    where = f"{source}: rule #{index + 1}" + (f" ('{label}')" if isinstance(label, str) else "")
    r = Reader(data, where, errors)
    if not r.ok:
        return None
    name = RULE.one(r, "name")
    action = RULE.one(r, "action")
    match = r.section("match", required=True)
    methods = paths = None
    hosts: list[str] = []
    query = headers = jconds = ()
    if match is not None:
        methods = MATCH.one(match, "methods")
        paths = MATCH.one(match, "paths")
        hosts = MATCH.one(match, "hosts", [])
        query = condition_map(match, "query")
        headers = condition_map(match, "headers", lower=True)
        jconds = json_conditions(match)
        match.finish()
    req_reader = r.section("require")
    requirement = None
    if req_reader is not None:
        if action in ("allow", "deny"):
            r.error("action", "no action (or 'require') when 'require' is given", action)
        requirement = _requirement(req_reader, name or f"rule-{index + 1}", known_factors)
        action = "require"
    elif action == "require" or (action is None and not r.has("action")):
        r.error("require", "a 'require' section or 'action: allow|deny'", MISSING)
    r.finish()
    if not r.ok:
        return None
    regex = None
    if paths:
        alternatives = [compile_path(p, case_insensitive).pattern for p in paths]
        regex = re.compile("|".join(f"(?:{a})" for a in alternatives),
                           re.IGNORECASE if case_insensitive else 0)
    return Rule(
        name=name, index=index, source=source, action=action,
        methods=frozenset(methods) if methods else None, paths=tuple(paths or ()),
        path_regex=regex, hosts=tuple(h.lower() for h in hosts), query=query,
        headers=headers, json=jconds, require=requirement,
    )


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


@dataclass(frozen=True)
class RuleSet:
    """The rules of every policy file, in order, and the files they came from."""

    rules: tuple[Rule, ...]
    sources: tuple[str, ...]


def load_rules(path: Path, *, known_factors: set[str], case_insensitive: bool = False,
               base: Path | None = None, errors: list[str] | None = None) -> RuleSet:
    """Read a file or a folder of YAML rules. Raises ConfigError listing every problem."""
    own = errors is None
    errs: list[str] = [] if errors is None else errors
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    sources = []

    def shown(p: Path) -> str:
        if base is not None:
            try:
                return str(p.relative_to(base))
            except ValueError:
                pass
        return str(p)

    if not path.exists():
        errs.append(f"{shown(path)}: policies: expected a YAML file or a folder of them, "
                    "found no such file or folder")
        files = []
    else:
        files = _files(path)
        if not files:
            errs.append(f"{shown(path)}: policies: expected at least one *.yaml file, found none")
    for file in files:
        src = shown(file)
        sources.append(src)
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            errs.append(f"{src}: expected a readable YAML document, found an error: {exc}")
            continue
        top = Reader(doc if doc is not None else {}, src, errs)
        raw_rules = top.raw("rules", [])
        top.finish()
        if not isinstance(raw_rules, list):
            top.error("rules", "a list of rules", raw_rules)
            continue
        for i, data in enumerate(raw_rules):
            rule = _rule(data, i, src, errs, known_factors, case_insensitive)
            if rule is None:
                continue
            if rule.name in seen:
                errs.append(f"{src}: rule #{i + 1} ('{rule.name}'): name: expected a unique "
                            f"rule name, found one already used in {seen[rule.name]}")
                continue
            if rule.name.startswith("stepgate:"):
                errs.append(f"{src}: rule #{i + 1} ('{rule.name}'): name: expected a name "
                            "outside the reserved 'stepgate:' namespace")
                continue
            seen[rule.name] = src
            rules.append(rule)
    if own and errs:
        raise ConfigError(errs)
    return RuleSet(tuple(rules), tuple(sources))


def _factor_list() -> Schema:
    return {"type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "string", "pattern": anchored(FACTOR_NAME)}}


def _require_schema() -> Schema:
    factors = {"description": "any one of a list, or {all_of: [...]} for each of them; "
                              "totp, recovery or a channel configured under factors:",
               "anyOf": [_factor_list(), obj({"all_of": _factor_list()}, ["all_of"])]}

    def binding_is(*names: str) -> Schema:
        return {"properties": {"binding": {"enum": list(names)}}, "required": ["binding"]}
    return REQUIRE.schema(nullable=False, extra={"factors": factors}, required=["factors"],
                          allOf=[
        # Only session binding shares a scope; a request-bound token is single use.
        {"if": binding_is("session"), "else": {"not": {"required": ["scope"]}}},
        {"if": binding_is("route", "session"), "else": {"properties": {"uses": {"const": 1}}}},
        {"if": binding_is("route"), "then": {"properties": {"uses": {"minimum": 1}}}},
    ])


def policy_file_schema() -> Schema:
    """A policy file: ``rules``, each with ``match`` and either ``action: allow|deny`` or a
    ``require`` section (docs/configuration.md, Policies)."""
    match = MATCH.schema(required=[], extra={
        "query": conditions_schema(), "headers": conditions_schema(),
        "json": conditions_schema(JSON_PATH_NAMES)})
    rule = RULE.schema(nullable=False, extra={"match": match, "require": _require_schema()},
                       required=["name", "match"],
                       **{"if": {"required": ["require"]},
                          "then": {"properties": {"action": {"const": "require"}}},
                          "else": {"required": ["action"],
                                   "properties": {"action": {"enum": ["allow", "deny"]}}}})
    return obj({"rules": {"type": "array", "items": rule}}, nullable=True,
               **{"$defs": {"condition": condition_schema()}})
