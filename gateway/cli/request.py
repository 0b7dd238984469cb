"""Client-side commands: ``stepgate request`` (one request through the 401 handshake, codes
asked on the terminal) and ``stepgate enrol`` (enrol a factor from a terminal)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``stepgate`` parser."""
