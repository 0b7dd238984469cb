"""Loading the YAML configuration: every section checked by its own validator
(config.sections), every error reported at once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.rules import RuleSet
from gateway.config.sections import SECTIONS, Loading
from gateway.config.sections.decisions import identity_problem
from gateway.config.settings import Settings, UpstreamSettings
from gateway.config.validate import ConfigError, Reader


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
    try:
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except OSError as exc:
        return CheckedConfig(cfg_path, where, (
            f"{where}: expected a readable configuration file, found {exc.strerror}",))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return CheckedConfig(cfg_path, where, (
            f"{where}: expected a YAML document, found an error: {exc}",))
    ctx = Loading(where=where, base=cfg_path.resolve().parent, errors=[])
    top = Reader(doc if doc is not None else {}, where, ctx.errors)
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
        return CheckedConfig(cfg_path, where, tuple(ctx.errors), None, partial, frozenset(valid))
    # Only meaningful once the rules and the identity section are known to be right.
    missing = identity_problem(ctx, ctx.values["rules"])
    if missing is not None:
        return CheckedConfig(cfg_path, where, (missing,), None, partial,
                             frozenset(valid - {"identity"}))
    settings = Settings(source=cfg_path.resolve(), **ctx.values)
    return CheckedConfig(cfg_path, where, (), settings, partial, frozenset(valid))


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Load and validate the whole configuration, policies included; raise ConfigError."""
    checked = check_settings(path)
    if checked.settings is None:
        raise ConfigError(list(checked.errors))
    return checked.settings
