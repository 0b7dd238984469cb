"""``stepgate keys generate``: a new signing key and data key, printed or written to a keys
file (docs/operations.md, Keys)."""

from __future__ import annotations

import argparse
import os
import sys

from gateway.cli.common import CommandError


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.keys import keys_file_text
    text = keys_file_text()
    if args.output:
        try:
            # Never over an existing file: its data keys may seal every enrolled secret.
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CommandError(f"{args.output} already exists; its keys may seal enrolled "
                               "secrets, so it is left as it is (rotate by adding a new key "
                               "first on each line)") from None
        except OSError as exc:
            raise CommandError(f"cannot create {args.output}: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote a signing key and a data key to {args.output} (readable by you only); "
              f"name it in the configuration (keys.file and keys.data_file) or pass "
              f"--keys-file {args.output}", file=sys.stderr)
        return 0
    print(text, end="")
    print("# Put the newest key first; keep old ones after a comma while tokens they signed "
          "may still be in use.", file=sys.stderr)
    return 0
