"""Policy rules as written: the validated, compiled rule set a configuration holds (loading
reports every error at once, each with file, rule, key, expected and found). The keys are
declared once (config.fields) for the loader and for ``stepgate schema policies``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

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
from gateway.config.validate import (
    MISSING,
    ConfigError,
    Problem,
    Reader,
    did_you_mean,
    found,
    line_of,
    listing,
    tidy,
)
from gateway.config.yamlfile import read_yaml, repeat_problem

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
    # required: never decide without the body (forward-auth endpoints that do not receive
    # it refuse instead of binding method, host, path and query alone)
    body: Literal["optional", "required"] = "optional"


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


def _method_problem(method: str) -> str | None:
    if re.fullmatch(METHOD, method):
        return None
    if re.fullmatch(METHOD, method.upper()):
        return f"is not upper case (write {method.upper()!r})"
    return "is not an HTTP method (upper-case letters, digits, '_' or '-')"


_SEGMENT_PROBLEMS = (
    ("?", "has '?': patterns match the path, never the query (use match.query)"),
    ("#", "has '#', which no request path carries"),
    ("%", "has '%': patterns match the percent-decoded path, so write the character itself"),
    (";", "has ';', which the gateway rejects in request paths"),
    ("\\", "has '\\', which the gateway rejects in request paths"),
)


def _path_problem(pattern: str) -> str | None:
    """What is wrong with a path pattern, in the words a policy author needs; None when
    it is right (the same verdict as PATH_PATTERN, which the JSON Schema uses)."""
    if _check_pattern(pattern):
        return None
    if not pattern.startswith("/"):
        return "does not start with '/'"
    segments = pattern.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            if not last:
                return "has '**' before its end: '**' may only end a pattern"
        elif not seg:
            return ("ends with '/' (leave it out: a trailing slash is matched anyway)" if last
                    else "has an empty segment ('//')")
        elif seg in (".", ".."):
            return f"has a {seg!r} segment, which no canonical request path has"
        elif "*" in seg:
            return "has '*' inside a segment: use {name} for one segment, or '**' last for any rest"
        elif ("{" in seg or "}" in seg) and not _PARAM_NAME.fullmatch(seg):
            return "has a '{' or '}' that is not a whole segment like {name}"
        for char, why in _SEGMENT_PROBLEMS:
            if char in seg:
                return why
    names = _PARAM_NAME.findall(pattern)
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        return f"names {{{twice}}} twice"
    return "is not a path pattern ('/' and segments: literal, {name}, or '**' last)"


FACTORS_EXPECTED = "a list of factor names, or {all_of: [...]}"
RULE = Group(Rule, (
    Text("name", pattern=RULE_NAME, expected="a name of letters, digits, '_', '.' or '-'",
         doc="unique across every policy file"),
    Choice("action", ACTIONS, optional=True,
           doc="allow or deny; a rule with a 'require' section needs none"),
))
MATCH = Group(Rule, (
    Strings("methods", item="upper-case HTTP methods", optional=True,
            check=_method_problem, item_pattern=anchored(METHOD),
            doc="absent: any method"),
    Strings("paths", item="path patterns starting with '/' ({name} for a segment, "
            "'**' last for any rest)", optional=True, check=_path_problem,
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
    Choice("body", literal(Requirement, "body"),
           doc="request binding: required refuses (403) to decide without the request body, "
               "as forward-auth endpoints that never receive it would"),
))


def _factors(r: Reader, known_factors: set[str]) -> tuple[tuple[str, ...], bool]:
    given = r.raw("factors", MISSING)
    factors_raw, all_of = given, False
    if isinstance(given, dict) and set(given) == {"all_of"}:
        factors_raw, all_of = given["all_of"], True
    if not isinstance(factors_raw, list) or not factors_raw:
        keys = [str(k) for k in given] if isinstance(given, dict) and not all_of else []
        hint = f" with {listing(keys, 'and')}{did_you_mean(keys[0], ['all_of'])}" if keys else ""
        r.error("factors", FACTORS_EXPECTED, factors_raw if all_of else given, hint=hint)
        return (), all_of
    key, bad = r.keypath("factors"), False
    for i, f in enumerate(factors_raw):
        line = line_of(factors_raw, i) or r.line_of("factors")
        if not isinstance(f, str):
            r.report(key, f"{found(f)} is not a factor name", line)
        elif f not in known_factors:
            r.report(key, "expected factors the configuration enables ("
                     + ", ".join(sorted(known_factors)) + f"), found {f!r}"
                     + did_you_mean(f, known_factors), line)
        elif f in factors_raw[:i]:
            r.report(key, f"{f!r} is listed twice", line)
        else:
            continue
        bad = True
    if bad:
        return (), all_of
    return tuple(factors_raw), all_of


def _requirement(r: Reader, name: str, known_factors: set[str]) -> Requirement | None:
    factors, all_of = _factors(r, known_factors)
    binding = REQUIRE.one(r, "binding")
    ttl = REQUIRE.one(r, "ttl", DEFAULT_TTL.get(binding or DEFAULT_BINDING))
    # A session token is unlimited within its ttl (uses 0); the others count their uses. A
    # binding that is itself wrong says nothing about which uses and scope would be right.
    known = not r.has("binding") or r.data["binding"] in BINDINGS
    session = binding == "session"
    uses = dataclasses.replace(USES, minimum=0 if session or not known else 1).read(
        r, 0 if session else 1)
    if known and binding == "request" and uses not in (1, None):
        r.error("uses", "1 (a request-bound token is single use)", uses)
    scope = REQUIRE.one(r, "scope", name)
    if r.has("scope") and known and not session:
        r.error("scope", "no scope (only session binding shares a scope)", r.data["scope"])
    max_age = REQUIRE.one(r, "max_age")
    unenrolled = REQUIRE.one(r, "unenrolled")
    style = REQUIRE.one(r, "challenge_style")
    acr = REQUIRE.one(r, "acr_values")
    body = REQUIRE.one(r, "body")
    if body == "required" and known and binding != "request":
        r.error("body", "no 'body' (only request binding binds the body)", body)
    r.finish()
    if not r.ok:
        return None
    return Requirement(factors, all_of, binding, ttl, uses or 0, scope, max_age,
                       unenrolled, style, acr, body)


def _rule_label(data: Any, index: int) -> str:
    """``rule #3 ('transfers')``, or ``rule #3`` while it has no name."""
    name = data.get("name") if isinstance(data, dict) else None
    return f"rule #{index + 1}" + (f" ('{name}')" if isinstance(name, str) else "")


def _rule(data: Any, index: int, source: str, errors: list[str], known_factors: set[str],
          case_insensitive: bool, seen: dict[str, str], line: int | None) -> Rule | None:
    before = len(errors)
    r = Reader(data, source, errors, scope=_rule_label(data, index), line=line)
    if r.broken:
        return None
    name = RULE.one(r, "name")
    if name is not None:
        # Checked for every rule with a good name, however wrong the rest of it is: a
        # policy author fixes both at once.
        if name in seen:
            r.report("name", f"expected a unique rule name, found {name!r}, already the name "
                     f"of {seen[name]}", r.line_of("name"))
        else:
            seen[name] = f"rule #{index + 1} in {source}" + (
                f":{r.line_of('name')}" if r.line_of("name") else "")
        if name.startswith("stepgate:"):
            r.report("name", "expected a name outside the reserved 'stepgate:' namespace, "
                     f"found {name!r}", r.line_of("name"))
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
        r.missing_key("require", "a 'require' section or 'action: allow|deny'",
                      also=("action",))
    r.finish()
    if len(errors) > before:
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
    """Read a file or a folder of YAML rules. Raises ConfigError listing every problem, or
    adds them to ``errors``."""
    own = errors is None
    errs: list[str] = [] if errors is None else errors
    start = len(errs)
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

    # Problems of the policies path itself: the configuration loader shows them at its
    # `policies:` key (kind "policies").
    if not path.exists():
        errs.append(Problem(shown(path), "expected a YAML file or a folder of them, found no "
                            "such file or folder", key="policies", kind="policies"))
        files = []
    else:
        files = _files(path)
        if not files:
            errs.append(Problem(shown(path), "expected at least one *.yaml file, found none",
                                key="policies", kind="policies"))
    for file in files:
        src = shown(file)
        sources.append(src)
        read = read_yaml(file, src)
        if read.problems:
            errs.extend(read.problems)
            continue
        doc = read.doc
        top = Reader(doc if doc is not None else {}, src, errs,
                     line=None if doc is None or isinstance(doc, dict) else 1)
        raw_rules = top.raw("rules", [])
        top.finish()
        if not isinstance(raw_rules, list):
            top.error("rules", "a list of rules", raw_rules)
            raw_rules = []
        for at, key, line, first in read.repeats:
            in_rule = len(at) > 1 and at[0] == "rules" and isinstance(at[1], int)
            errs.append(repeat_problem(
                src, at[2:] if in_rule else at, key, line, first,
                _rule_label(raw_rules[at[1]], at[1]) if in_rule else ""))
        for i, data in enumerate(raw_rules):
            rule = _rule(data, i, src, errs, known_factors, case_insensitive, seen,
                         line_of(raw_rules, i))
            if rule is not None:
                rules.append(rule)
    errs[start:] = tidy(errs[start:])
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
