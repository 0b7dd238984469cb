"""Policy rules as written: the validated, compiled rule set a configuration holds (loading
reports every error at once, each with file, rule, key, expected and found)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.config.validate import MISSING, ConfigError, Reader

Action = Literal["allow", "deny", "require"]
Binding = Literal["request", "route", "session"]
BINDINGS = ("request", "route", "session")
MAX_TTL = 15 * 60.0
DEFAULT_TTL = {"request": 120.0, "route": 120.0, "session": 300.0}
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*\Z")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_JSON_PATH = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])+)\Z")
_JSON_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")
_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "present", "regex")
ABSENT = object()  # a value the request does not carry


@dataclass(frozen=True, slots=True)
class Requirement:
    factors: tuple[str, ...]
    all_of: bool
    binding: Binding
    ttl: float
    uses: int  # 0 means unlimited (session binding)
    scope: str
    max_age: float | None
    unenrolled: Literal["deny", "allow"]
    challenge_style: Literal["secondfactor", "rfc9470"]
    acr_values: str


@dataclass(frozen=True, slots=True)
class Condition:
    """One comparison on a value taken from the query, a header or the JSON body."""

    op: str
    operand: Any

    def test(self, value: Any) -> bool | None:
        """True, False, or None when the value's type makes the answer unknowable."""
        op = self.op
        if op == "present":
            return (value is not ABSENT) == self.operand
        if value is ABSENT:
            return op in ("ne", "not_in")
        if op == "eq":
            return bool(value == self.operand)
        if op == "ne":
            return bool(value != self.operand)
        if op == "in":
            return value in self.operand
        if op == "not_in":
            return value not in self.operand
        if op == "regex":
            if not isinstance(value, str):
                return None
            return self.operand.search(value) is not None
        number = _as_number(value)
        if number is None:
            return None
        if op == "gt":
            return bool(number > self.operand)
        if op == "gte":
            return bool(number >= self.operand)
        if op == "lt":
            return bool(number < self.operand)
        return bool(number <= self.operand)


def _as_number(value: Any) -> float | None:
    # An upstream that coerces "5000" to 5000 must not let a string dodge a step-up rule.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


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
        m = _PARAM.match(seg)
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
    if not pattern.startswith("/"):
        return False
    parts = pattern.split("/")[1:]
    if pattern == "/":
        return True
    names = set()
    for i, seg in enumerate(parts):
        if seg == "**":
            if i != len(parts) - 1:
                return False
            continue
        m = _PARAM.match(seg)
        if m:
            if m.group(1) in names:
                return False
            names.add(m.group(1))
            continue
        if not seg or seg in (".", "..") or any(c in seg for c in "{}*?#;\\%"):
            return False
    return True


def _conditions(reader: Reader, key: str, value: Any) -> tuple[Condition, ...] | None:
    if not isinstance(value, dict):
        if isinstance(value, (str, int, float, bool)):
            return (Condition("eq", value),)
        reader.error(key, "a value or a mapping of operators", value)
        return None
    conds = []
    for op, operand in value.items():
        if op not in _OPERATORS:
            reader.error(f"{key}.{op}", "one of " + ", ".join(repr(o) for o in _OPERATORS),
                         op)
            continue
        if op in ("gt", "gte", "lt", "lte"):
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                reader.error(f"{key}.{op}", "a number", operand)
                continue
            operand = float(operand)
        elif op in ("in", "not_in"):
            if not isinstance(operand, list):
                reader.error(f"{key}.{op}", "a list", operand)
                continue
        elif op == "present":
            if not isinstance(operand, bool):
                reader.error(f"{key}.{op}", "true or false", operand)
                continue
        elif op == "regex":
            try:
                operand = re.compile(str(operand))
            except re.error as exc:
                reader.error(f"{key}.{op}", f"a regular expression ({exc})", operand)
                continue
        conds.append(Condition(op, operand))
    return tuple(conds)


def _cond_map(match: Reader, key: str, lower: bool = False) -> tuple[Any, ...]:
    raw = match.raw(key, None)
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        match.error(key, "a mapping of names to conditions", raw)
        return ()
    out = []
    for name, value in raw.items():
        conds = _conditions(match, f"{key}.{name}", value)
        if conds is not None:
            out.append((str(name).lower() if lower else str(name), conds))
    return tuple(out)


def _json_conds(match: Reader) -> tuple[Any, ...]:
    raw = match.raw("json", None)
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        match.error("json", "a mapping of JSON paths like '$.amount' to conditions", raw)
        return ()
    out = []
    for jpath, value in raw.items():
        m = _JSON_PATH.match(str(jpath))
        if not m:
            match.error(f"json.{jpath}", "a JSON path like '$.amount' or '$.items[0].id'", jpath)
            continue
        steps = tuple(int(b) if b else a for a, b in _JSON_STEP.findall(m.group(1)))
        conds = _conditions(match, f"json.{jpath}", value)
        if conds is not None:
            out.append((str(jpath), steps, conds))
    return tuple(out)


def _requirement(r: Reader, name: str, known_factors: set[str]) -> Requirement | None:
    factors_raw = r.raw("factors", None)
    all_of = False
    factors: list[str] = []
    expected = "a list of factor names, or {all_of: [...]}"
    if isinstance(factors_raw, dict) and set(factors_raw) == {"all_of"}:
        all_of = True
        factors_raw = factors_raw["all_of"]
    if isinstance(factors_raw, list) and factors_raw and all(isinstance(f, str) for f in factors_raw):
        factors = list(factors_raw)
        unknown = [f for f in factors if f not in known_factors]
        if unknown:
            r.error("factors", "factors the configuration enables ("
                    + ", ".join(sorted(known_factors)) + ")", ", ".join(unknown))
        if len(set(factors)) != len(factors):
            r.error("factors", "each factor once", factors_raw)
    else:
        r.error("factors", expected, r.data.get("factors", MISSING))
    binding = r.choice("binding", BINDINGS, "request")
    ttl = r.duration("ttl", DEFAULT_TTL.get(binding or "request", 120.0), maximum=MAX_TTL)
    default_uses = 0 if binding == "session" else 1
    uses = r.integer("uses", default_uses, minimum=1 if binding != "session" else 0)
    if binding == "request" and uses not in (1, None):
        r.error("uses", "1 (a request-bound token is single use)", uses)
    scope = r.string("scope", name)
    if r.has("scope") and binding != "session":
        r.error("scope", "no scope (only session binding shares a scope)", r.data["scope"])
    max_age = r.duration("max_age", None)
    unenrolled = r.choice("unenrolled", ("deny", "allow"), "deny")
    style = r.choice("challenge_style", ("secondfactor", "rfc9470"), "secondfactor")
    acr = r.string("acr_values", "urn:stepgate:2fa")
    r.finish()
    if not r.ok:
        return None
    return Requirement(tuple(factors), all_of, binding, ttl, uses or 0, scope, max_age,
                       unenrolled, style, acr)


def _rule(data: Any, index: int, source: str, errors: list[str], known_factors: set[str],
          case_insensitive: bool) -> Rule | None:
    label = data.get("name") if isinstance(data, dict) else None
    where = f"{source}: rule #{index + 1}" + (f" ('{label}')" if isinstance(label, str) else "")
    r = Reader(data, where, errors)
    if not r.ok:
        return None
    name = r.string("name", pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
                    expected="a name of letters, digits, '_', '.' or '-'")
    action = r.choice("action", ("allow", "deny", "require"), None)
    match = r.section("match", required=True)
    methods = paths = None
    hosts: list[str] = []
    query = headers = jconds = ()
    if match is not None:
        methods = match.string_list("methods", None, item="upper-case HTTP methods",
                                    check=lambda m: bool(_METHOD.match(m)))
        paths = match.string_list(
            "paths", None, item="path patterns starting with '/' ({name} for a segment, "
            "'**' last for any rest)", check=_check_pattern)
        hosts = match.string_list("hosts", [], item="host names")
        query = _cond_map(match, "query")
        headers = _cond_map(match, "headers", lower=True)
        jconds = _json_conds(match)
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
