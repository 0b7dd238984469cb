"""The policy engine: first matching rule wins, with explain() saying why earlier rules
missed; the rules themselves come validated from config.rules."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from gateway.config.rules import ABSENT, Condition, Rule, RuleSet, load_rules
from gateway.config.validate import ConfigError, found
from gateway.decision.paths import CanonicalPath
from gateway.primitives import BoundedCache
from gateway.problems import Problem, bad_request


class NeedBody(Exception):
    """Raised by matching when a rule's JSON conditions need the request body."""


@dataclass(slots=True)
class RequestView:
    """What matching may look at; ``body`` is None until a JSON rule needs it."""

    method: str
    path: str
    host: str
    query: bytes
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes | None = None


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _single(pairs: list[tuple[str, str]], name: str, where: str) -> Any:
    values = [v for k, v in pairs if k == name]
    if not values:
        return ABSENT
    if len(values) > 1:
        # Parameter pollution: we cannot know which copy the upstream reads.
        raise bad_request(f"the {where} '{name}' appears more than once", "ambiguous-request")
    return values[0]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise bad_request("the JSON body repeats a key", "ambiguous-request")
    return dict(pairs)


def parse_json_body(body: bytes) -> Any:
    try:
        return json.loads(body, object_pairs_hook=_reject_duplicate_keys)
    except Problem:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("the route inspects the JSON body, which is not valid JSON",
                          "invalid-body") from None


def _json_lookup(doc: Any, steps: tuple[str | int, ...]) -> Any:
    cur = doc
    for step in steps:
        if isinstance(step, int):
            if not isinstance(cur, list) or step >= len(cur):
                return ABSENT
        elif not isinstance(cur, dict) or step not in cur:
            return ABSENT
        cur = cur[step]
    return cur


CacheKey = tuple[str, bytes, bytes | None]


class PolicyEngine:
    """An ordered rule list (the first rule that matches decides) and the caches built on
    it. The gateway holds one reference to an engine, so replacing the rules is one swap
    and no request ever sees half of the old rules and half of the new."""

    def __init__(self, rules: Sequence[Rule], default_action: Literal["allow", "deny"],
                 sources: Sequence[str] = ()) -> None:
        self.rules = list(rules)
        self.default_action = default_action
        self.sources = list(sources)
        self.by_name = {r.name: r for r in rules}
        # Decisions that depend only on (method, raw path, Host) are remembered: that holds
        # up to the first rule with query, header or JSON conditions.
        # key -> (path, rule, what the caller built for it: for an allow, the decision)
        self.decisions: BoundedCache[CacheKey, tuple[CanonicalPath, Rule | None, Any]] = \
            BoundedCache()
        self._position = {r.name: n for n, r in enumerate(self.rules)}
        simple = next((n for n, r in enumerate(self.rules) if r.query or r.headers or r.json),
                      len(self.rules))
        # No rule has such conditions: the default decision depends on nothing else either.
        self._simple = simple + 1 if simple == len(self.rules) else simple

    @classmethod
    def from_rules(cls, rules: RuleSet, default_action: Literal["allow", "deny"]) -> PolicyEngine:
        return cls(rules.rules, default_action, rules.sources)

    def remember(self, key: CacheKey, path: CanonicalPath, rule: Rule | None,
                 extra: Any = None) -> None:
        """Cache a match if it was decided by method, path and Host alone."""
        if (self._position[rule.name] if rule else len(self.rules)) < self._simple:
            self.decisions.put(key, (path, rule, extra))

    def _evaluate(self, rule: Rule, req: RequestView, parsed: dict[str, Any]) -> list[str]:
        """Reasons the rule does not match; empty when it does."""
        if rule.methods is not None and req.method not in rule.methods:
            return [f"method {req.method} is not one of {', '.join(sorted(rule.methods))}"]
        if rule.path_regex is not None and rule.path_regex.match(req.path) is None:
            return [f"path {req.path} matches none of {', '.join(rule.paths)}"]
        if rule.hosts and not any(_host_matches(h, req.host) for h in rule.hosts):
            return [f"host {req.host or '(none)'} is not one of {', '.join(rule.hosts)}"]
        reasons: list[str] = []
        if rule.query:
            if "query" not in parsed:
                text = req.query.decode("latin-1")
                parsed["query"] = parse_qsl(text, keep_blank_values=True)
            for name, conds in rule.query:
                value = _single(parsed["query"], name, "query parameter")
                reasons += self._conditions(rule, f"query {name}", conds, value)
        if rule.headers:
            if "headers" not in parsed:
                parsed["headers"] = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                                     for k, v in req.headers]
            for name, conds in rule.headers:
                value = _single(parsed["headers"], name, "header")
                reasons += self._conditions(rule, f"header {name}", conds, value)
        if rule.json and not reasons:
            if req.body is None:
                raise NeedBody
            if "json" not in parsed:
                parsed["json"] = parse_json_body(req.body)
            for jpath, steps, conds in rule.json:
                value = _json_lookup(parsed["json"], steps)
                reasons += self._conditions(rule, f"json {jpath}", conds, value)
        return reasons

    @staticmethod
    def _conditions(rule: Rule, label: str, conds: tuple[Condition, ...], value: Any) -> list[str]:
        for cond in conds:
            verdict = cond.test(value)
            if verdict is None:
                # Unknowable (wrong type): protective rules match, allow rules do not.
                verdict = rule.action != "allow"
            if not verdict:
                shown = "absent" if value is ABSENT else found(value)
                return [f"{label} is {shown}, which fails {cond.op} {cond.operand!r}"]
        return []

    def match(self, req: RequestView) -> Rule | None:
        """First rule that matches, or None for default_action; may raise NeedBody."""
        parsed: dict[str, Any] = {}
        for rule in self.rules:
            if not self._evaluate(rule, req, parsed):
                return rule
        return None

    def explain(self, req: RequestView) -> tuple[Rule | None, list[tuple[Rule, list[str]]]]:
        parsed: dict[str, Any] = {}
        misses: list[tuple[Rule, list[str]]] = []
        for rule in self.rules:
            try:
                reasons = self._evaluate(rule, req, parsed)
            except NeedBody:
                reasons = ["its JSON conditions need a request body (pass --json)"]
            if not reasons:
                return rule, misses
            misses.append((rule, reasons))
        return None, misses


def load_policy(path: Path, *, default_action: Literal["allow", "deny"], known_factors: set[str],
                case_insensitive: bool = False) -> PolicyEngine:
    """Rules from a file or folder, ready to match (raises ConfigError listing every problem)."""
    errors: list[str] = []
    rs = load_rules(path, known_factors=known_factors, case_insensitive=case_insensitive,
                    errors=errors)
    if errors:
        raise ConfigError(errors)
    return PolicyEngine(rs.rules, default_action, rs.sources)
