"""What every command shares: the exit statuses, finding the configuration file and the
keys, reporting problems the one way (``stepgate: N problem(s) ...`` on standard error,
exit status 2), and progress lines for long operations.

Exit statuses (docs/operations.md, Command line): 0 done; 1 the command ran and failed (the
store does not answer, no such user, not confirmed); 2 the command line or the
configuration is wrong, or something the configuration names (keys, files, a lost store).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway.config.load import load_settings
from gateway.config.settings import Settings
from gateway.config.validate import ConfigError
from gateway.keys import KeyError_, KeyRing

OK, FAILURE, USAGE = 0, 1, 2
KEYS_FILE_ENV = "STEPGATE_KEYS_FILE"


class CommandError(Exception):
    """A command cannot go on: ``main`` prints ``stepgate: <message>`` (and any ``hints``
    after it) on standard error and exits with ``code``, never with a traceback."""

    def __init__(self, message: str, code: int = FAILURE, hints: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.hints = list(hints)


def config_path(path: str | None) -> str:
    config = path or os.environ.get("STEPGATE_CONFIG")
    if not config:
        raise CommandError("expected --config FILE or the environment variable "
                           "STEPGATE_CONFIG, found neither", USAGE)
    return config


def report(problems: Sequence[str], hints: Sequence[str] = ()) -> None:
    print(f"stepgate: {len(problems)} problem(s) in the configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    for hint in hints:
        print(hint, file=sys.stderr)


def settings(path: str | None) -> Settings:
    """The validated configuration, or exit 2 after listing every problem."""
    try:
        return load_settings(config_path(path))
    except ConfigError as exc:
        report(exc.errors)
        raise SystemExit(USAGE) from None


def keys_file(args: argparse.Namespace) -> Path | None:
    """``--keys-file`` (or STEPGATE_KEYS_FILE): one file with both lists of keys, in place
    of the configuration's ``keys`` section."""
    value = getattr(args, "keys_file", None) or os.environ.get(KEYS_FILE_ENV)
    return Path(value) if value else None


def shown(path: Path) -> str:
    """A path as the user would type it from here."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def key_problems(exc: KeyError_, where: str) -> list[str]:
    """Each problem prefixed with the configuration file, unless it is about --keys-file."""
    return [p if p.startswith("--") else f"{where}: {p}" for p in exc.problems]


def key_hints(exc: KeyError_, config: Path) -> list[str]:
    """How to create the keys that were not found, with the commands to type."""
    hints: list[str] = []
    for file in exc.unreadable:
        hints.append(f"to create {shown(file)}: stepgate keys generate --output {shown(file)}")
    if exc.unset:
        new = config.parent / "stepgate.keys"
        hints += [f"to create keys: stepgate keys generate --output {shown(new)}",
                  f"  then set keys.file and keys.data_file to {new.name} in {shown(config)},",
                  f"  or pass --keys-file {shown(new)} to each command,",
                  f"  or set {' and '.join(exc.unset)} to the values the file holds"]
    return hints


def load_keys(s: Settings, args: argparse.Namespace) -> KeyRing:
    """The key ring read the way ``run`` reads it, or exit 2 naming what is missing."""
    try:
        return KeyRing.from_settings(s.keys, keys_file(args))
    except KeyError_ as exc:
        report(key_problems(exc, shown(s.source)), key_hints(exc, s.source))
        raise SystemExit(USAGE) from None


def progress_enabled(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


@contextmanager
def progress(args: argparse.Namespace, what: str) -> Iterator[None]:
    """``stepgate: <what>...`` before a long step and ``done`` after it, on standard error
    when it is a terminal or with --progress; nothing otherwise."""
    if not progress_enabled(args):
        yield
        return
    print(f"stepgate: {what}...", file=sys.stderr, flush=True)
    started = time.monotonic()
    yield
    print(f"stepgate: {what}: done in {time.monotonic() - started:.1f} s", file=sys.stderr,
          flush=True)
