"""What every command shares: finding the configuration file, and reporting its problems
the one way (``stepgate: N problem(s) ...`` on standard error, exit status 2)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from gateway.config.load import load_settings
from gateway.config.settings import Settings
from gateway.config.validate import ConfigError


def config_path(path: str | None) -> str:
    config = path or os.environ.get("STEPGATE_CONFIG")
    if not config:
        raise SystemExit("stepgate: expected --config FILE or STEPGATE_CONFIG")
    return config


def report(problems: Sequence[str]) -> None:
    print(f"stepgate: {len(problems)} problem(s) in the configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def settings(path: str | None) -> Settings:
    """The validated configuration, or exit 2 after listing every problem."""
    try:
        return load_settings(config_path(path))
    except ConfigError as exc:
        report(exc.errors)
        raise SystemExit(2) from None
