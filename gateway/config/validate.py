"""Reading untrusted YAML into typed values while collecting every error at once."""

from __future__ import annotations

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


class ConfigError(Exception):
    """Raised with every problem found while loading configuration or policies."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


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
        return "a mapping"
    if isinstance(value, list):
        return "a list"
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

    ``where`` reads like ``policies/bank.yaml: rule #3 ('transfers')``; keys are
    reported as dotted paths below it.
    """

    def __init__(self, data: Any, where: str, errors: list[str], path: str = "") -> None:
        self.where = where
        self.errors = errors
        self.path = path
        self.ok = True
        if not isinstance(data, dict):
            self._error_at(path or "(top level)", "a mapping", data)
            data = {}
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _error_at(self, keypath: str, expected: str, value: Any) -> None:
        self.ok = False
        self.errors.append(f"{self.where}: {keypath}: expected {expected}, found {found(value)}")

    def error(self, key: str, expected: str, value: Any) -> None:
        self._error_at(self._key(key), expected, value)

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
        """``convert`` returns the typed value, or None when the value is invalid."""
        self.used.add(key)
        if key not in self.data:
            if default is MISSING:
                self.error(key, expected, MISSING)
            return None if default is MISSING else default
        value = self.data[key]
        result = convert(value)
        if result is None:
            self.error(key, expected, value)
            return None if default is MISSING else default
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
        return self.get(key, expected, lambda v: v if v in options else None, default)

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
                    check: Callable[[str], bool] | None = None) -> Any:
        def conv(v: Any) -> list[str] | None:
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not v:
                return None
            if not all(isinstance(x, str) and x and (check is None or check(x)) for x in v):
                return None
            return list(v)
        return self.get(key, f"a non-empty list of {item}", conv, default)

    def section(self, key: str, required: bool = False) -> Reader | None:
        self.used.add(key)
        if key not in self.data:
            if required:
                self.error(key, "a mapping", MISSING)
            return None
        value = self.data[key]
        if value is None:
            value = {}
        sub = Reader(value, self.where, self.errors, self._key(key))
        if not sub.ok:
            self.ok = False
        return sub

    def finish(self) -> None:
        """Report every key nobody asked for: unknown keys are errors, not typos to ignore."""
        for key in self.data:
            if key not in self.used:
                self.ok = False
                known = ", ".join(repr(k) for k in sorted(self.used))
                self.errors.append(
                    f"{self.where}: {self._key(str(key))}: unknown key; expected one of {known}"
                )
