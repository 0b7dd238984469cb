"""What every section validator shares: the file being loaded, the errors found so far, and
the settings that earlier sections produced."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.fields import Group, Schema
from gateway.config.settings import BUILTIN_FACTORS
from gateway.config.validate import Problem, Reader

HEADER_NAME = r"[A-Za-z0-9][A-Za-z0-9-]*"  # an RFC 9110 §5.1 token, as header names are written


@dataclass
class Loading:
    """One configuration file being validated. Sections run in order and add the keyword
    arguments of ``Settings`` to ``values``; later sections read what earlier ones set
    (identity's realm defaults to ``realm``, rules may require only configured factors)."""

    where: str
    base: Path
    errors: list[str]
    values: dict[str, Any] = field(default_factory=dict)
    known_factors: set[str] = field(default_factory=lambda: set(BUILTIN_FACTORS))
    policies: Path | None = None
    # Channels that are configured but wrong: reported where they are written, and not
    # again by every rule or setting that names them.
    broken_channels: set[str] = field(default_factory=set)

    def resolve(self, value: str) -> Path:
        """Relative paths are relative to the configuration file's folder, not to the
        working directory (docs/configuration.md)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def problem(self, keypath: str, expected: str, found: str, line: int | None = None) -> None:
        self.errors.append(Problem(self.where, f"expected {expected}, found {found}", line=line,
                                   key=keypath))


@dataclass(frozen=True)
class Section:
    """One validator: its name, the check, and the JSON Schema of the top-level keys it
    owns (``stepgate schema config`` is the union of every section's schema)."""

    name: str
    validate: Callable[[Reader, Loading], None]
    schema: Callable[[], dict[str, Schema]]
    required: tuple[str, ...] = ()


def read_group(r: Reader, key: str, group: Group, *, required: bool = False,
               **defaults: Any) -> dict[str, Any] | None:
    """The nested mapping ``key`` read through ``group``, unknown keys reported; None when
    the mapping is absent."""
    sub = r.section(key, required=required)
    if sub is None:
        return None
    values = group.read(sub, **defaults)
    sub.finish()
    return values


def properties_of(*groups: Group) -> dict[str, Schema]:
    """The schemas of top-level keys declared by groups of ``Settings`` attributes."""
    return {k: v for g in groups for k, v in g.properties().items()}
