"""Conditions of ``match.query``, ``match.headers`` and ``match.json``: a plain value (equals)
or operators. One table says which operand each operator takes; the validator and the JSON
Schema both read it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.config.fields import Schema, anchored
from gateway.config.validate import Reader, did_you_mean, line_of

ABSENT = object()  # a value the request does not carry

# operator -> the operand it takes, in the order messages list them
OPERATORS: dict[str, str] = {
    "eq": "value", "ne": "value", "gt": "number", "gte": "number", "lt": "number",
    "lte": "number", "in": "list", "not_in": "list", "present": "boolean", "regex": "regex",
}
_OPERANDS: dict[str, Schema] = {
    "value": {}, "number": {"type": "number"}, "list": {"type": "array"},
    "boolean": {"type": "boolean"}, "regex": {"type": "string", "format": "regex"},
}
JSON_PATH = r"\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])+"
_JSON_PATH = re.compile(JSON_PATH)
_JSON_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


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


def _operand(reader: Reader, key: str, op: str, operand: Any,
             line: int | None) -> tuple[bool, Any]:
    kind = OPERATORS[op]
    if kind == "number":
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            reader.error(key, "a number", operand, line=line)
            return False, None
        return True, float(operand)
    if kind == "list":
        if not isinstance(operand, list):
            reader.error(key, "a list", operand, line=line)
            return False, None
        return True, list(operand)
    if kind == "boolean" and not isinstance(operand, bool):
        reader.error(key, "true or false", operand, line=line)
        return False, None
    if kind == "regex":
        try:
            return True, re.compile(str(operand))
        except re.error as exc:
            reader.error(key, f"a regular expression ({exc})", operand, line=line)
            return False, None
    return True, operand


def conditions(reader: Reader, key: str, value: Any,
               line: int | None = None) -> tuple[Condition, ...] | None:
    """The conditions on one name: ``key`` is its dotted path below ``reader``, written on
    ``line``."""
    if not isinstance(value, dict):
        if isinstance(value, (str, int, float, bool)):
            return (Condition("eq", value),)
        reader.error(key, "a value or a mapping of operators", value, line=line)
        return None
    conds = []
    for op, operand in value.items():
        at = line_of(value, op) or line
        if op not in OPERATORS:
            reader.error(f"{key}.{op}", "one of " + ", ".join(repr(o) for o in OPERATORS), op,
                         line=at, hint=did_you_mean(op, OPERATORS))
            continue
        ok, parsed = _operand(reader, f"{key}.{op}", op, operand, at)
        if ok:
            conds.append(Condition(op, parsed))
    return tuple(conds)


def condition_map(match: Reader, key: str, lower: bool = False) -> tuple[Any, ...]:
    """``match.query`` or ``match.headers``: names to conditions."""
    raw = match.raw(key, None)
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        match.error(key, "a mapping of names to conditions", raw)
        return ()
    out = []
    for name, value in raw.items():
        conds = conditions(match, f"{key}.{name}", value, line_of(raw, name))
        if conds is not None:
            out.append((str(name).lower() if lower else str(name), conds))
    return tuple(out)


def json_conditions(match: Reader) -> tuple[Any, ...]:
    """``match.json``: JSON paths to conditions, each path split into its steps."""
    raw = match.raw("json", None)
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        match.error("json", "a mapping of JSON paths like '$.amount' to conditions", raw)
        return ()
    out = []
    for jpath, value in raw.items():
        line = line_of(raw, jpath)
        if not _JSON_PATH.fullmatch(str(jpath)):
            match.error(f"json.{jpath}", "a JSON path like '$.amount' or '$.items[0].id'", jpath,
                        line=line)
            continue
        steps = tuple(int(b) if b else a for a, b in _JSON_STEP.findall(str(jpath)[1:]))
        conds = conditions(match, f"json.{jpath}", value, line)
        if conds is not None:
            out.append((str(jpath), steps, conds))
    return tuple(out)


def condition_schema() -> Schema:
    operators = {op: dict(_OPERANDS[kind]) for op, kind in OPERATORS.items()}
    return {"anyOf": [
        {"type": ["string", "number", "boolean"], "description": "equals this value"},
        {"type": "object", "additionalProperties": False, "properties": operators},
    ]}


def conditions_schema(names: Schema | None = None) -> Schema:
    """A non-empty mapping of names (or, for ``json``, JSON paths) to conditions."""
    out: Schema = {"type": "object", "minProperties": 1,
                   "additionalProperties": {"$ref": "#/$defs/condition"}}
    if names is not None:
        out["propertyNames"] = names
    return out


JSON_PATH_NAMES: Schema = {"pattern": anchored(JSON_PATH)}
