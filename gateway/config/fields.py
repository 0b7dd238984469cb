"""Declared configuration keys: each one is read by the validators and exported as JSON
Schema from the same object, so ``stepgate check`` and an editor cannot disagree about a
key's name, type, bounds, choices or default.

A ``Group`` ties the keys of one YAML mapping to one settings dataclass; defaults come from
that dataclass and nowhere else (docs/configuration.md lists them).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from gateway.config.validate import DURATION_PATTERN, MISSING, SIZE_PATTERN, Reader

Schema = dict[str, Any]


def anchored(pattern: str) -> str:
    """A fullmatch pattern as a JSON Schema ``pattern``, which matches anywhere unless
    anchored (JSON Schema Validation 2020-12 §6.3.3; ECMA 262 syntax)."""
    return f"^(?:{pattern})$"


def obj(properties: Mapping[str, Schema], required: typing.Iterable[str] = (),
        nullable: bool = False, **extra: Any) -> Schema:
    """A closed mapping: unknown keys are errors in the loader, so they are in the schema."""
    out: Schema = {"type": ["object", "null"] if nullable else "object",
                   "additionalProperties": False, "properties": dict(properties)}
    req = list(required)
    if req:
        out["required"] = req
    out.update(extra)
    return out


@functools.cache
def defaults_of(cls: type) -> Mapping[str, Any]:
    """The dataclass's own defaults: the one place each default value is written."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def literal(cls: type, attr: str) -> tuple[str, ...]:
    """The values a ``Literal[...]`` attribute of ``cls`` allows, in the order written."""
    args = typing.get_args(typing.get_type_hints(cls)[attr])
    if not args or not all(isinstance(a, str) for a in args):
        raise TypeError(f"{cls.__name__}.{attr} is not a Literal of strings")
    return args


def format_duration(seconds: float) -> str:
    """How a duration default is written in YAML: ``2s``, ``5m``, ``1h``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _upto(n: int) -> str:
    """A pattern for the decimal integers 0..n, leading zeros allowed as the loader allows."""
    digits = str(n)
    shorter = [rf"\d{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    same = [digits[:i] + (f"[0-{int(d) - 1}]" if d != "1" else "0") + rf"\d{{{len(digits) - i - 1}}}"
            for i, d in enumerate(digits) if d != "0"]
    return "0*(?:" + "|".join([*shorter, *same, digits]) + ")"


def duration_pattern(maximum: float | None) -> str:
    """Durations as the loader reads them, bounded by ``maximum`` seconds in every unit, so
    an editor flags ``ttl: 1h`` where at most 15 minutes are allowed. Where a bound is not
    a whole number of a unit it is rounded up: the schema may miss a case, never refuse a
    value the loader accepts."""
    if maximum is None:
        return rf"^\s*{DURATION_PATTERN}\s*$"
    units = []
    for unit, size in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        bound = maximum / size
        whole = int(bound)
        if abs(bound - round(bound)) < 1e-9:
            whole = round(bound)
            below = [rf"{_upto(whole - 1)}\.\d+"] if whole else []
            number = "|".join([_upto(whole), *below, rf"0*{whole}\.0+"])
        else:
            number = rf"{_upto(whole)}(?:\.\d+)?"
        units.append(f"(?:{number}){unit}")
    return rf"^\s*(?:{'|'.join(units)})\s*$"


@dataclass(frozen=True)
class Field:
    """One key of a mapping. ``attr`` names the dataclass attribute when it differs from
    the key; ``required`` makes a key mandatory even where the dataclass has a default;
    ``optional`` lets a key without a dataclass default be left out (None); ``derive``
    computes the default from the dataclass's defaults when no one attribute holds it
    (``listen`` is host and port)."""

    key: str
    _: KW_ONLY
    attr: str = ""
    doc: str = ""
    required: bool = False
    optional: bool = False
    derive: Callable[[Mapping[str, Any]], Any] | None = None

    @property
    def name(self) -> str:
        return self.attr or self.key

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        raise NotImplementedError

    def schema(self) -> Schema:
        raise NotImplementedError

    def written(self, value: Any) -> Any:
        """A default as it is written in YAML, for the schema's ``default``."""
        return value


@dataclass(frozen=True)
class Text(Field):
    pattern: str | None = None
    expected: str = "a string"

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.string(self.key, default, pattern=self.pattern, expected=self.expected)

    def schema(self) -> Schema:
        out: Schema = {"type": "string", "minLength": 1}
        if self.pattern:
            out["pattern"] = anchored(self.pattern)
        return out


@dataclass(frozen=True)
class Choice(Field):
    choices: tuple[str, ...] = ()

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.choice(self.key, self.choices, default)

    def schema(self) -> Schema:
        return {"enum": list(self.choices)}


@dataclass(frozen=True)
class Flag(Field):
    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.boolean(self.key, default)

    def schema(self) -> Schema:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Integer(Field):
    minimum: int = 0
    maximum: int | None = None

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.integer(self.key, default, minimum=self.minimum, maximum=self.maximum)

    def schema(self) -> Schema:
        out: Schema = {"type": "integer", "minimum": self.minimum}
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@dataclass(frozen=True)
class Duration(Field):
    maximum: float | None = None

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.duration(self.key, default, maximum=self.maximum)

    def schema(self) -> Schema:
        number: Schema = {"type": "number", "minimum": 0}
        if self.maximum is not None:
            number["maximum"] = int(self.maximum) if self.maximum % 1 == 0 else self.maximum
        out: Schema = {"anyOf": [
            {"type": "string", "pattern": duration_pattern(self.maximum)}, number]}
        if self.maximum is not None:
            out["description"] = f"at most {format_duration(self.maximum)}"
        return out

    def written(self, value: Any) -> Any:
        return format_duration(value)


@dataclass(frozen=True)
class Size(Field):
    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.size(self.key, default)

    def schema(self) -> Schema:
        return {"anyOf": [{"type": "string", "pattern": rf"^\s*{SIZE_PATTERN}\s*$"},
                          {"type": "integer", "minimum": 0}]}

    def written(self, value: Any) -> Any:
        return format_size(value)


@dataclass(frozen=True)
class Strings(Field):
    """A non-empty list of strings (a single string counts as a list of one). ``check`` says
    what is wrong with one item (``is not upper case``), or None when it is right."""

    item: str = "a string"
    check: Callable[[str], str | None] | None = None
    item_pattern: str | None = None

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.string_list(self.key, default, item=self.item, check=self.check)

    def written(self, value: Any) -> Any:
        return list(value) or None

    def schema(self) -> Schema:
        one: Schema = {"type": "string", "minLength": 1}
        if self.item_pattern:
            one["pattern"] = self.item_pattern
        return {"anyOf": [one, {"type": "array", "minItems": 1, "items": one}]}


@dataclass(frozen=True)
class Custom(Field):
    """A key with its own conversion (None means invalid; raising validate.Invalid says
    which item is wrong and why) and its own schema."""

    expected: str = ""
    convert: Callable[[Any], Any] = lambda v: v
    json: Schema = dataclasses.field(default_factory=dict)
    show: Callable[[Any], Any] | None = None

    def read(self, r: Reader, default: Any = MISSING) -> Any:
        return r.get(self.key, self.expected, self.convert, default)

    def schema(self) -> Schema:
        return dict(self.json)

    def written(self, value: Any) -> Any:
        return self.show(value) if self.show else value


@dataclass(frozen=True)
class Group:
    """The keys of one YAML mapping and the dataclass their values belong to."""

    cls: type
    fields: tuple[Field, ...]

    def __getitem__(self, key: str) -> Field:
        return next(f for f in self.fields if f.key == key)

    def default(self, f: Field) -> Any:
        if f.required:
            return MISSING
        defaults = defaults_of(self.cls)
        if f.derive:
            return f.derive(defaults)
        return defaults.get(f.name, None if f.optional else MISSING)

    def one(self, r: Reader, key: str, *default: Any) -> Any:
        """One key, with the group's default unless ``default`` is given."""
        f = self[key]
        return f.read(r, default[0] if default else self.default(f))

    def read(self, r: Reader, **defaults: Any) -> dict[str, Any]:
        """Every declared key, by attribute name; ``defaults`` override the dataclass's
        where a default depends on another key."""
        return {f.name: f.read(r, defaults.get(f.name, self.default(f))) for f in self.fields}

    def properties(self) -> dict[str, Schema]:
        out: dict[str, Schema] = {}
        for f in self.fields:
            s = f.schema()
            default = self.default(f)
            shown = None if default is MISSING or default is None else f.written(default)
            if shown is not None:
                s["default"] = shown
            if f.doc:
                s["description"] = f.doc + (f" ({s['description']})" if "description" in s else "")
            out[f.key] = s
        return out

    def required(self) -> list[str]:
        return [f.key for f in self.fields if self.default(f) is MISSING]

    def schema(self, nullable: bool = True, extra: Mapping[str, Schema] | None = None,
               required: typing.Iterable[str] | None = None, **more: Any) -> Schema:
        """The mapping as a closed JSON Schema object; a YAML section left empty is null
        (the loader reads it as an empty mapping). ``extra`` adds keys the validator reads
        by hand; ``required`` replaces the keys without a default."""
        return obj({**self.properties(), **(extra or {})},
                   self.required() if required is None else required, nullable, **more)
