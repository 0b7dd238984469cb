"""Loading the YAML configuration: every section checked by its own validator
(config.sections), every error reported at once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.rules import RuleSet
from gateway.config.sections import SECTIONS, Loading
from gateway.config.sections.decisions import identity_problem
from gateway.config.settings import Settings, UpstreamSettings
from gateway.config.validate import ConfigError, Problem, Reader, tidy
from gateway.config.yamlfile import read_yaml, repeat_problem


@dataclass(frozen=True)
class CheckedConfig:
    """A configuration file as far as it validated: ``settings`` when it did completely,
    otherwise the errors, plus what each section that validated produced (``stepgate
    check`` goes on to check the keys and files those sections name)."""

    source: Path
    where: str
    errors: tuple[str, ...]
    settings: Settings | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    valid: frozenset[str] = frozenset()

    def so_far(self) -> Settings:
        """The settings when the file validated; otherwise a stand-in holding what the
        valid sections produced and defaults for the rest (ask ``valid`` before trusting
        a section's values)."""
        if self.settings is not None:
            return self.settings
        values = dict(self.values)
        upstream = values.pop("upstream", None) or UpstreamSettings(url="")
        rules = values.pop("rules", None) or RuleSet((), ())
        return Settings(source=self.source.resolve(), upstream=upstream, rules=rules, **values)


def check_settings(path: str | os.PathLike[str]) -> CheckedConfig:
    """Validate the whole configuration, policies included, without raising."""
    cfg_path = Path(path)
    where = str(cfg_path)
    read = read_yaml(cfg_path, where, "a readable configuration file")
    if read.problems:
        return CheckedConfig(cfg_path, where, tuple(read.problems))
    doc = read.doc
    ctx = Loading(where=where, base=cfg_path.resolve().parent, errors=[])
    ctx.errors.extend(repeat_problem(where, *repeat) for repeat in read.repeats)
    top = Reader(doc if doc is not None else {}, where, ctx.errors,
                 line=None if doc is None or isinstance(doc, dict) else 1)
    if top.broken:
        return CheckedConfig(cfg_path, where, tuple(ctx.errors))
    valid = set()
    partial: dict[str, Any] = {}
    for section in SECTIONS:
        errors, known = len(ctx.errors), set(ctx.values)
        section.validate(top, ctx)
        if len(ctx.errors) == errors:
            valid.add(section.name)
            partial.update((k, v) for k, v in ctx.values.items() if k not in known)
    top.finish()
    if ctx.errors:
        return CheckedConfig(cfg_path, where, tuple(_settled(ctx, top)), None, partial,
                             frozenset(valid))
    # Only meaningful once the rules and the identity section are known to be right.
    missing = identity_problem(ctx, ctx.values["rules"])
    if missing is not None:
        if top.has("identity") and missing.startswith(f"{where}: "):
            missing = Problem(where, missing.removeprefix(f"{where}: identity: "),
                              line=top.line_of("identity"), key="identity")
        return CheckedConfig(cfg_path, where, (missing,), None, partial,
                             frozenset(valid - {"identity"}))
    settings = Settings(source=cfg_path.resolve(), **ctx.values)
    return CheckedConfig(cfg_path, where, (), settings, partial, frozenset(valid))


def _settled(ctx: Loading, top: Reader) -> list[str]:
    """The problems as the author should read them: a wrong ``policies:`` value alone (the
    rules read from the default folder instead would only mislead), problems of the
    policies path at the ``policies:`` key, every problem once, in file and line order."""
    def ours(p: str) -> bool:
        return isinstance(p, Problem) and p.file == ctx.where and p.key == "policies"

    errors = ctx.errors
    if any(ours(p) for p in errors):
        errors = [p for p in errors if not isinstance(p, Problem) or p.file == ctx.where]
    errors = [p.moved(ctx.where, top.line_of("policies"))
              if isinstance(p, Problem) and p.kind == "policies" else p for p in errors]
    return tidy(errors, ctx.where)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Load and validate the whole configuration, policies included; raise ConfigError."""
    checked = check_settings(path)
    if checked.settings is None:
        raise ConfigError(list(checked.errors))
    return checked.settings
