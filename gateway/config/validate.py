"""Reading untrusted YAML into typed values while collecting every error at once."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

# Written once, without anchors, so the JSON Schema (config.fields) uses the same text;
# JSON Schema patterns are ECMA 262 and unanchored, Python's fullmatch needs none.
DURATION_PATTERN = r"(\d+(?:\.\d+)?)(ms|s|m|h|d)"
SIZE_PATTERN = r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(SIZE_PATTERN)
_SIZE_UNITS = {
    None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
}
MISSING = object()
# How alike a misspelling and a known name must be (difflib ratio) to be suggested: 0.6
# finds dropped, doubled and swapped letters without pairing unrelated short names.
SUGGEST_CUTOFF = 0.6


class ConfigError(Exception):
    """Raised with every problem found while loading configuration or policies."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Problem(str):
    """One problem as it is printed, ``file:line: rule #2 ('pay'): match.methods: what``. It
    is the string the commands print, and keeps its parts so that the loader can order the
    problems by line and withdraw one that another explains (a misspelt key is not also a
    missing one)."""

    file: str
    line: int | None
    column: int | None
    scope: str
    key: str
    text: str
    kind: str

    def __new__(cls, file: str, text: str, *, line: int | None = None,
                column: int | None = None, scope: str = "", key: str = "",
                kind: str = "value") -> Problem:
        at = file if line is None else f"{file}:{line}" + ("" if column is None else f":{column}")
        self = super().__new__(cls, ": ".join(part for part in (at, scope, key, text) if part))
        self.file, self.line, self.column = file, line, column
        self.scope, self.key, self.text, self.kind = scope, key, text, kind
        return self

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (str(self),)

    def moved(self, file: str, line: int | None) -> Problem:
        """The same problem shown at another place (a policies path, at its config key)."""
        return Problem(file, self.text, line=line, scope=self.scope, key=self.key,
                       kind=self.kind)


def tidy(problems: list[str], first: str = "") -> list[str]:
    """Each problem once, file by file (``first`` leading, then as they came) and in line
    order within a file, so a policy author can work through a file from the top."""
    rank: dict[str, int] = {first: 0} if first else {}

    def order(p: str) -> tuple[int, int]:
        file = p.file if isinstance(p, Problem) else ""
        line = (p.line or 0) if isinstance(p, Problem) else 0
        return rank.setdefault(file, len(rank)), line
    return sorted(dict.fromkeys(problems), key=order)


class Invalid(ValueError):
    """Raised by a conversion to say why a value is wrong, when saying which item of it is
    wrong and why helps more than "found a list": ``at`` is the item's index or key."""

    def __init__(self, why: str, at: Any = None) -> None:
        super().__init__(why)
        self.reasons: list[tuple[str, Any]] = [(why, at)]

    @classmethod
    def each(cls, reasons: list[tuple[str, Any]]) -> Invalid:
        exc = cls(reasons[0][0], reasons[0][1])
        exc.reasons = list(reasons)
        return exc


def suggest(word: Any, choices: Iterable[Any]) -> str | None:
    """The choice ``word`` most likely misspells, if one is close enough."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1,
                                      cutoff=SUGGEST_CUTOFF)
    return close[0] if close else None


def did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    guess = suggest(word, choices)
    return f", did you mean {guess!r}?" if guess else ""


def line_of(container: Any, at: Any) -> int | None:
    """The line a key of a mapping or an item of a list was written on, when it was read
    from a file (config.yamlfile)."""
    lines = getattr(container, "lines", None)
    if isinstance(lines, dict):
        line: int | None = lines.get(at)
        return line
    if isinstance(lines, list) and isinstance(at, int) and 0 <= at < len(lines):
        return int(lines[at])
    return None


def listing(names: Iterable[str], last: str = "or") -> str:
    """``'a', 'b' or 'c'``: how messages name the choices a registry offers."""
    quoted = [repr(n) for n in names]
    if len(quoted) < 2:
        return "".join(quoted)
    return f"{', '.join(quoted[:-1])} {last} {quoted[-1]}"


def found(value: Any) -> str:
    if value is MISSING:
        return "nothing"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return type(value).__name__


def parse_duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return None


def parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    return None


class Reader:
    """A view of one mapping that knows where it came from, for error messages.

    ``file`` and ``scope`` (``rule #3 ('transfers')``) say where, ``path`` is the dotted key
    path of the mapping and ``line`` the line it starts on; each problem is reported at the
    line of the key or item at fault (config.yamlfile records them).
    """

    def __init__(self, data: Any, file: str, errors: list[str], path: str = "", *,
                 scope: str = "", line: int | None = None) -> None:
        self.file = file
        self.scope = scope
        self.errors = errors
        self.path = path
        self.line = line
        self.ok = True
        # Keys reported missing, by the names whose presence would have answered them.
        self.missing: dict[str, Problem] = {}
        # A value that is not a mapping is reported once, not once for each key it lacks.
        self.broken = not isinstance(data, dict)
        if self.broken:
            self.report(path, f"expected a mapping, found {found(data)}")
            data = {}
        self.data: dict[Any, Any] = data
        self.used: set[Any] = set()

    def keypath(self, key: str) -> str:
        if not key:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: Any) -> int | None:
        return line_of(self.data, key) or self.line

    def report(self, keypath: str, text: str, line: int | None = None,
               kind: str = "value") -> Problem:
        """Any problem, at ``line`` or else at the start of this mapping."""
        self.ok = False
        problem = Problem(self.file, text, line=line or self.line, scope=self.scope,
                          key=keypath, kind=kind)
        self.errors.append(problem)
        return problem

    def error(self, key: str, expected: str, value: Any, *, line: int | None = None,
              hint: str = "") -> None:
        """``key: expected ..., found ...``; ``key`` may be a dotted path below this mapping
        (then pass its ``line``)."""
        if value is MISSING:
            self.missing_key(key, expected)
            return
        self.report(self.keypath(key), f"expected {expected}, found {found(value)}{hint}",
                    line or self.line_of(key))

    def missing_key(self, key: str, expected: str, also: Iterable[str] = ()) -> None:
        """``key`` (or, when empty, this mapping) lacks what ``expected`` says. Withdrawn by
        ``finish`` when an unknown key turns out to misspell ``key`` or one of ``also``."""
        self.ok = False
        if self.broken:
            return
        problem = self.report(self.keypath(key), f"expected {expected}, found nothing",
                              kind="missing")
        for name in (key, *also):
            if name:
                self.missing[name] = problem

    def invalid(self, key: str, exc: Invalid) -> None:
        """The items of ``key``'s value that ``exc`` names, each at its own line."""
        value = self.data.get(key)
        for why, at in exc.reasons:
            line = line_of(value, at) if at is not None else None
            self.report(self.keypath(key), why, line or self.line_of(key))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = MISSING) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def get(
        self,
        key: str,
        expected: str,
        convert: Callable[[Any], Any],
        default: Any = MISSING,
    ) -> Any:
        """``convert`` returns the typed value, or None when the value is invalid, or raises
        Invalid to say which part of it is wrong and why."""
        self.used.add(key)
        fallback = None if default is MISSING else default
        if key not in self.data:
            if default is MISSING:
                self.missing_key(key, expected)
            return fallback
        value = self.data[key]
        try:
            result = convert(value)
        except Invalid as exc:
            self.invalid(key, exc)
            return fallback
        if result is None:
            self.error(key, expected, value)
            return fallback
        return result

    def string(self, key: str, default: Any = MISSING, pattern: str | None = None,
               expected: str = "a string") -> Any:
        rx = re.compile(pattern) if pattern else None

        def conv(v: Any) -> str | None:
            if isinstance(v, str) and v and (rx is None or rx.fullmatch(v)):
                return v
            return None
        return self.get(key, expected, conv, default)

    def choice(self, key: str, choices: Iterable[str], default: Any = MISSING) -> Any:
        options = list(choices)
        expected = "one of " + ", ".join(repr(c) for c in options)

        def conv(v: Any) -> Any:
            if v in options:
                return v
            raise Invalid(f"expected {expected}, found {found(v)}{did_you_mean(v, options)}")
        return self.get(key, expected, conv, default)

    def boolean(self, key: str, default: Any = MISSING) -> Any:
        return self.get(key, "true or false", lambda v: v if isinstance(v, bool) else None, default)

    def integer(self, key: str, default: Any = MISSING, minimum: int = 0,
                maximum: int | None = None) -> Any:
        bound = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

        def conv(v: Any) -> int | None:
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                return None
            if maximum is not None and v > maximum:
                return None
            return v
        return self.get(key, bound, conv, default)

    def duration(self, key: str, default: Any = MISSING, maximum: float | None = None) -> Any:
        expected = "a duration like '30s', '2m' or '1h'"
        if maximum is not None:
            expected += f" of at most {int(maximum)}s"

        def conv(v: Any) -> float | None:
            d = parse_duration(v)
            if d is None or (maximum is not None and d > maximum):
                return None
            return d
        return self.get(key, expected, conv, default)

    def size(self, key: str, default: Any = MISSING) -> Any:
        return self.get(key, "a size like '1MiB' or a number of bytes", parse_size, default)

    def string_list(self, key: str, default: Any = MISSING, item: str = "a string",
                    check: Callable[[str], str | None] | None = None) -> Any:
        """A non-empty list of strings, or one string; ``check`` says what is wrong with an
        item (``is not upper case``), or None."""
        def conv(v: Any) -> list[str] | None:
            items = [v] if isinstance(v, str) else v
            if not isinstance(items, list) or not items:
                return None
            reasons = []
            for i, x in enumerate(items):
                if not isinstance(x, str):
                    why: str | None = f"{found(x)} is not a string"
                elif not x:
                    why = "'' is empty"
                else:
                    problem = check(x) if check is not None else None
                    why = f"{x!r} {problem}" if problem else None
                if why:
                    reasons.append((why, i if items is v else None))
            if reasons:
                raise Invalid.each(reasons)
            return list(items)
        return self.get(key, f"a non-empty list of {item}", conv, default)

    def section(self, key: str, required: bool = False) -> Reader | None:
        self.used.add(key)
        if key not in self.data:
            if required:
                self.missing_key(key, "a mapping")
            return None
        value = self.data[key]
        if value is None:
            value = {}
        sub = Reader(value, self.file, self.errors, self.keypath(key), scope=self.scope,
                     line=self.line_of(key))
        if not sub.ok:
            self.ok = False
        return sub

    def _withdraw(self, problem: Problem) -> None:
        for i, e in enumerate(self.errors):
            if e is problem:
                del self.errors[i]
                break
        for name in [n for n, p in self.missing.items() if p is problem]:
            del self.missing[name]

    def finish(self) -> None:
        """Report every key nobody asked for: unknown keys are errors, not typos to ignore.
        A key close to a known one is named as its likely misspelling, and the known key is
        then not also reported missing."""
        for key in self.data:
            if key in self.used:
                continue
            guess = suggest(key, self.used)
            if guess is not None:
                text = f"unknown key {key!r}, did you mean {guess!r}?"
                intended = self.missing.get(guess)
                if intended is not None:
                    self._withdraw(intended)
            else:
                known = ", ".join(repr(k) for k in sorted(self.used, key=str))
                text = f"unknown key {key!r}; expected one of {known}"
            self.report(self.path, text, self.line_of(key), kind="unknown")
