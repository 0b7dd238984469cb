"""The documentation points only at what exists: every relative link (and its #anchor) and
every repository path named in the prose of README.md, docs/*.md and docker/README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ROOT

DOCS = sorted([ROOT / "README.md", ROOT / "docker" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# A path into the repository named in the text, such as `tests/store/test_contract.py`.
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|docker|gateway|tests|bench|policies|demo)/"
                       r"[\w./-]*\w\.(?:md|py|yaml|yml|sh|txt|json|htpasswd))\b")


def prose(path: Path) -> str:
    """The text outside fenced code blocks (examples there may name files of the reader's)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    out = set()
    for line in prose(path).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: ...
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {name(dest)}")
    assert not broken, f"{name(doc)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_named_repository_paths_exist(doc: Path) -> None:
    missing = sorted({p for p in REPO_PATH.findall(prose(doc)) if not (ROOT / p).exists()})
    assert not missing, f"{name(doc)} names files that are not in the repository: {missing}"
