"""Reading a YAML file for validation: every mapping and list remembers the line of each of
its keys and items, a key written twice in one mapping is found rather than silently
overwritten, and a syntax error becomes one problem in plain words, with line and column."""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, SequenceNode

from gateway.config.validate import Problem

_MERGE = "tag:yaml.org,2002:merge"


class YamlMap(dict[Any, Any]):
    """A mapping as written: ``lines`` holds each key's line (1-based)."""

    __slots__ = ("lines", "repeated")

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}
        self.repeated: list[tuple[Any, int, int]] = []  # key, its line, the first one's line


class YamlList(list[Any]):
    """A list as written: ``lines`` holds each item's line (1-based)."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []


class _Positions(SafeConstructor):
    """SafeConstructor building YamlMap and YamlList; merge keys (``<<: *defaults``) work as
    before, and only the keys a mapping writes itself count as written twice."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats = 0

    def _map(self, node: MappingNode) -> Iterator[YamlMap]:
        data = YamlMap()
        yield data
        own = sum(1 for key, _ in node.value if key.tag != _MERGE)
        self.flatten_mapping(node)
        first_own = len(node.value) - own
        written: dict[Any, int] = {}
        for i, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node)
            if not isinstance(key, Hashable):
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "found unhashable key", key_node.start_mark)
            line = key_node.start_mark.line + 1
            if i >= first_own:
                if key in written:
                    data.repeated.append((key, line, written[key]))
                    self.repeats += 1
                written[key] = line
            data[key] = self.construct_object(value_node)
            data.lines[key] = line

    def _seq(self, node: SequenceNode) -> Iterator[YamlList]:
        data = YamlList()
        yield data
        data.extend(self.construct_object(child) for child in node.value)
        data.lines = [child.start_mark.line + 1 for child in node.value]


_Positions.add_constructor("tag:yaml.org,2002:map", _Positions._map)  # type: ignore[type-var]
_Positions.add_constructor("tag:yaml.org,2002:seq", _Positions._seq)  # type: ignore[type-var]


class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,
              yaml.composer.Composer, _Positions, yaml.resolver.Resolver):
    """The pure-Python parser: slower, and the one whose error messages name the character
    at fault, so a file libyaml refused is parsed again with it to explain why."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Positions.__init__(self)
        yaml.resolver.Resolver.__init__(self)


# libyaml parses several times faster; without it, the pure-Python parser does the work.
FAST: Any = _Loader
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastLoader(CParser, _Positions, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Positions.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    FAST = _FastLoader


def _parse(loader_class: Any, text: str) -> tuple[Any, int]:
    """The document and how many keys it writes twice."""
    loader = loader_class(text)
    try:
        return loader.get_single_data(), loader.repeats
    finally:
        loader.dispose()


@dataclass
class YamlFile:
    """One file as read: the document (None when it could not be read) and what was wrong
    with it as YAML: ``problems`` (unreadable, a syntax error) and ``repeats``, each a key
    written twice as (path of its mapping, key, line, line of the first)."""

    doc: Any
    problems: list[Problem] = field(default_factory=list)
    repeats: list[tuple[tuple[Any, ...], Any, int, int]] = field(default_factory=list)


def read_yaml(path: Path, file: str, what: str = "a readable YAML file") -> YamlFile:
    """``file`` is the name problems show; ``what`` what they expected to read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return YamlFile(None, [Problem(file, f"expected {what}, found {exc.strerror}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start].decode("utf-8", "replace")
        line, column = _position(before, len(before))
        return YamlFile(None, [Problem(
            file, f"expected UTF-8 text, found the byte 0x{raw[exc.start]:02x}",
            line=line, column=column, kind="syntax")])
    try:
        doc, repeats = _parse(FAST, text)
    except yaml.YAMLError as exc:
        return YamlFile(None, [syntax_problem(_explained(text, exc), text, file)])
    return YamlFile(doc, repeats=list(_repeats(doc)) if repeats else [])


def _explained(text: str, exc: yaml.YAMLError) -> yaml.YAMLError:
    """libyaml's error, or the pure-Python parser's for the same text, which names the
    character at fault."""
    if FAST is _Loader:
        return exc
    try:
        _parse(_Loader, text)
    except yaml.YAMLError as better:
        return better
    return exc


def _repeats(doc: Any) -> Iterator[tuple[tuple[Any, ...], Any, int, int]]:
    """Where each key written twice is, as the path of the mapping that holds it."""
    seen: set[int] = set()  # an alias names a mapping again; report it once
    todo: list[tuple[tuple[Any, ...], Any]] = [((), doc)]
    while todo:
        at, node = todo.pop()
        if not isinstance(node, (dict, list)) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, YamlMap):
            for key, line, first in node.repeated:
                yield at, key, line, first
        children = node.items() if isinstance(node, dict) else enumerate(node)
        todo.extend(((*at, k), v) for k, v in children)


def _dotted(path: tuple[Any, ...]) -> str:
    """``('match', 'json', '$.a', 'in', 0)`` as ``match.json.$.a.in[0]``."""
    out = ""
    for step in path:
        if isinstance(step, int) and not isinstance(step, bool):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out


def repeat_problem(file: str, at: tuple[Any, ...], key: Any, line: int, first: int,
                   scope: str = "") -> Problem:
    return Problem(file, f"expected each key once, found {key!r} again (first on line {first})",
                   line=line, scope=scope, key=_dotted(at), kind="repeat")


# ---------------------------------------------------------------------------- syntax errors

def _position(before: str, index: int) -> tuple[int, int]:
    line = before.count("\n")
    return line + 1, index - (before.rfind("\n") + 1) + 1


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _meaningful(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


_GOT = re.compile(r"but (?:got|found) (.+)$")
_KEY_VALUE = re.compile(r"""^\s*(?:-\s+)?(?:[^\s#'"][^#]*?|"[^"]*"|'[^']*')\s*:(?:\s|$)""")
_TOKENS = {"'<stream end>'": "the end of the file", "'<scalar>'": "a value",
           "'<block mapping start>'": "a key", "'<block sequence start>'": "a list item",
           "'?'": "a key", "'-'": "a list item"}


@dataclass(frozen=True)
class _At:
    """A place in the text, 0-based as PyYAML counts."""

    line: int
    column: int
    index: int


def _at(mark: Any) -> _At | None:
    return None if mark is None else _At(mark.line, mark.column, mark.index)


def _explain(exc: yaml.MarkedYAMLError, text: str) -> tuple[_At | None, str]:
    """The place to show and what to say, for the mistakes people make writing YAML by hand;
    otherwise PyYAML's own words without its parser vocabulary."""
    problem, context = exc.problem or "", exc.context or ""
    mark, opened = _at(exc.problem_mark), _at(exc.context_mark)
    if mark is None:
        return opened, problem or context
    lines = text.split("\n")
    line = lines[mark.line] if mark.line < len(lines) else ""
    here = text[mark.index] if mark.index < len(text) else ""
    indent = _indent(line)
    line_start = _At(mark.line, indent, mark.index - mark.column + indent)

    if here == "\t" and ("cannot start any token" in problem or "tab character" in problem):
        if not line[:mark.column].strip():
            return mark, "a tab character cannot indent YAML; use spaces"
        return mark, "a tab character cannot separate values here; use spaces"
    if "cannot start any token" in problem:
        return mark, f"{here!r} cannot start a value; put the value in quotes"
    if context.startswith("while parsing a flow") and opened is not None:
        opener, closer, kind = ("[", "]", "list") if "sequence" in context else ("{", "}", "mapping")
        if not text[mark.index:].strip():
            return opened, f"this {opener!r} is never closed; add {closer!r} where the {kind} ends"
        got = _GOT.search(problem)
        token = _TOKENS.get(got.group(1), got.group(1)) if got else repr(here)
        missing = f"; is its {closer!r} missing?" if mark.line > opened.line else ""
        return mark, (f"expected ',' or {closer!r} in the {kind} opened with {opener!r} on "
                      f"line {opened.line + 1}, found {token}{missing}")
    if "quoted scalar" in context and "end of stream" in problem and opened is not None:
        quote = text[opened.index]
        return opened, (f"the string opened here with {quote} is never closed; add the "
                        f"closing {quote}")
    if "unknown escape character" in problem:
        slash = text.rfind("\\", 0, mark.index + 1)
        column = slash - (text.rfind("\n", 0, slash) + 1)
        return (_At(mark.line, column, slash),
                f"'{text[slash:slash + 2]}' is not an escape sequence in a double-quoted "
                "string; write '\\\\' for a backslash, or put the value in single quotes")
    if problem.startswith("mapping values are not allowed"):
        if re.search(r":(?:\s|$)", line[:mark.column]):
            return mark, "a value that contains ': ' must be put in quotes"
        above = next((i for i in range(mark.line - 1, -1, -1) if _meaningful(lines[i])), None)
        if above is not None:
            prev = lines[above]
            if not _KEY_VALUE.match(prev):
                return (_At(above, _indent(prev), 0),
                        "expected 'key: value', found a line without ':'")
            if indent > _indent(prev):
                return line_start, ("this line is indented more than the line above it, "
                                    "whose key already has a value; indent it like the keys "
                                    "it belongs with")
        return mark, "a ':' cannot appear here; check this line's indentation"
    if context.startswith(("while parsing a block mapping", "while parsing a block collection")):
        if mark.column > indent:
            return mark, "unexpected text after the value; put the whole value in quotes"
        if here == "-" and "mapping" in context:
            return mark, ("a list item cannot appear among the keys of a mapping; check its "
                          "indentation")
        if "collection" in context and opened is not None and mark.column == opened.column:
            return mark, ("a key cannot appear between the items of a list; indent it like "
                          "the keys of the item above it")
        return line_start, (f"this line is indented by {indent} space"
                            f"{'' if indent == 1 else 's'}, which lines up with nothing above "
                            "it; indent it like the keys it belongs with")
    if context.startswith("while scanning a simple key") and opened is not None:
        return opened, "expected 'key: value', found a line without ':'"
    if problem.startswith("found undefined alias"):
        name = re.match(r"\*?([^\s,\]}]*)", text[mark.index:])
        alias = name.group(1) if name else "?"
        return mark, f"the alias *{alias} refers to no anchor &{alias} written before it"
    if context.startswith("expected a single document"):
        return mark, "a second YAML document starts here; the file must hold only one"
    if problem.startswith("could not determine a constructor for the tag"):
        return mark, f"unknown tag {problem.rsplit(' ', 1)[-1]}; remove it"
    if context.startswith("found duplicate anchor") and opened is not None:
        name = re.match(r"&?([^\s,\]}]*)", text[mark.index:])
        anchor = name.group(1) if name else "?"
        return mark, (f"the anchor &{anchor} is defined twice (first on line "
                      f"{opened.line + 1}); rename one of them")
    if "for merging" in problem:
        return mark, "'<<' merges only a mapping (such as *defaults) or a list of them"
    if problem == "found unhashable key":
        return mark, "a list or a mapping cannot be a key"
    if opened is not None and context.startswith("while "):
        thing = re.sub(r"^while \w+ ", "", context)
        return mark, f"{problem} (in {thing} that starts on line {opened.line + 1})"
    return mark, f"{context} {problem}".strip()


def syntax_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    """One problem, ``file:line:column: YAML syntax error: ...``, for what PyYAML raised."""
    line: int | None
    column: int | None
    if isinstance(exc, yaml.MarkedYAMLError):
        at, message = _explain(exc, text)
        line, column = (at.line + 1, at.column + 1) if at is not None else (None, None)
    elif isinstance(exc, yaml.reader.ReaderError):
        line, column = _position(text[:exc.position], exc.position)
        message = f"the control character 0x{exc.character:02x} is not allowed; remove it"
    else:
        line, column, message = None, None, str(exc)
    return Problem(file, f"YAML syntax error: {message}", line=line, column=column,
                   kind="syntax")
