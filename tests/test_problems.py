"""The one problem catalogue: every problem type the code raises is in it, with one status
and one title (RFC 9457 §3.1.3)."""

from __future__ import annotations

import re

import pytest

from gateway.problems import CATALOGUE, Problem

from .conftest import ROOT

USES = re.compile(r'(?:Problem|UpstreamError|retry_later)\(\s*"([a-z-]+)"|'
                  r'bad_request\([^()]*(?:\([^()]*\)[^()]*)*,\s*"([a-z-]+)"\)', re.S)


def names_in_source() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for m in USES.finditer(path.read_text()):
            found.add(m.group(1) or m.group(2))
    return found


def test_every_raised_type_is_catalogued() -> None:
    used = names_in_source()
    assert len(used) > 25  # the pattern really finds the call sites
    assert used - set(CATALOGUE) == set()


def test_a_type_renders_its_catalogued_status_and_title() -> None:
    for name, (status, title) in CATALOGUE.items():
        code, _, body = Problem(name, detail="d").render()
        assert code == status and f'"title": "{title}"' in body.decode()
        assert body.decode().startswith('{"type": "urn:stepgate:problem:' + name)


def test_an_unknown_type_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        Problem("no-such-problem")
