"""``stepgate keys generate``: a new signing key and data key (docs/operations.md, Keys)."""

from __future__ import annotations

import argparse
import sys


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.keys import generate_data_key, generate_signing_key
    print(f"STEPGATE_KEYS={generate_signing_key()}")
    print(f"STEPGATE_DATA_KEYS={generate_data_key()}")
    print("# Put the newest key first; keep old ones after a comma while tokens they signed "
          "may still be in use.", file=sys.stderr)
    return 0
