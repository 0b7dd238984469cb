"""What the CLI tests share."""

from __future__ import annotations

from pathlib import Path

import yaml


def small_config(d: Path, **extra: object) -> Path:
    """One allow rule and a SQLite store in ``d``."""
    (d / "p.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "a", "match": {"paths": ["/x"]}, "action": "allow"}]}))
    cfg = d / "c.yaml"
    cfg.write_text(yaml.safe_dump({"upstream": {"url": "http://127.0.0.1:1"}, "policies": "p.yaml",
                                   "store": "sqlite:///s.db",
                                   "identity": {"basic": {"verify": "backend"}}, **extra}))
    return cfg
