"""The canonicaliser, one row per bypass class (docs/configuration.md)."""

from __future__ import annotations

import pytest

from gateway.decision.paths import canonicalize
from gateway.problems import Problem

STRICT = [
    # raw path, decoded path for matching (None: rejected with 400)
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("/%61dmin", "/admin"),
    ("/caf%C3%A9", "/café"),
    ("/a%20b", "/a b"),
    ("//a", None),
    ("/a//b", None),
    ("/a/./b", None),
    ("/a/../b", None),
    ("/a/..", None),
    ("/.", None),
    ("/a/%2e%2e/b", None),
    ("/a/%2E%2E/b", None),
    ("/a/%2e/b", None),
    ("/a/.%2e/b", None),
    ("/a/%252e%252e/b", None),
    ("/a/%252F", None),
    ("/a%2fb", None),
    ("/a%2Fb", None),
    ("/a%5cb", None),
    ("/a%5Cb", None),
    ("/a\\b", None),
    ("/a%00b", None),
    ("/a\x00b", None),
    ("/a;b", None),
    ("/a%3bb", None),
    ("/a#b", None),
    ("/a%zz", None),
    ("/a%4", None),
    ("/a%", None),
    ("/a%0a", None),
    ("/a b", None),
    ("a/b", None),
    ("*", None),
    ("/%C3%28", None),  # invalid UTF-8
    ("/é".encode().decode("latin-1"), None),  # raw non-ASCII byte
    # characters NFKC folds into path syntax (upstreams that normalise Unicode)
    ("/a/%ef%bc%8e%ef%bc%8e/b", None),  # U+FF0E FULLWIDTH FULL STOP: '..'
    ("/a/%EF%BC%8E/b", None),  # '.'
    ("/a/.%ef%bc%8e/b", None),  # mixed
    ("/a/%ef%bc%8f/b", None),  # U+FF0F FULLWIDTH SOLIDUS: '/'
    ("/a/%ef%bc%bcb", None),  # U+FF3C FULLWIDTH REVERSE SOLIDUS: '\\'
    ("/a/%e2%80%a5/b", None),  # U+2025 TWO DOT LEADER: '..'
    ("/a/%ef%b9%92/b", None),  # U+FE52 SMALL FULL STOP: '.'
    ("/a/%ef%bc%9bb", None),  # U+FF1B FULLWIDTH SEMICOLON: ';'
    ("/a/%ef%bc%85", None),  # U+FF05 FULLWIDTH PERCENT SIGN: '%'
    ("/%EF%BD%81dmin", None),  # fullwidth 'a': 'admin' to an upstream that folds
    ("/a/%ef%ac%81le", None),  # U+FB01 LATIN SMALL LIGATURE FI: 'file'
    ("/cafe%CC%81", "/cafe\u0301"),  # NFD 'é' folds to a non-ASCII 'é': kept
    ("/%E2%82%AC", "/\u20ac"),  # '€' is stable under NFKC: kept
]


@pytest.mark.parametrize("raw,decoded", STRICT)
def test_strict(raw: str, decoded: str | None) -> None:
    data = raw.encode("latin-1")
    if decoded is None:
        with pytest.raises(Problem) as err:
            canonicalize(data)
        assert err.value.status == 400
        assert err.value.name == "non-canonical-path"
    else:
        cp = canonicalize(data)
        assert cp.decoded == decoded
        assert cp.raw == raw  # forwarded byte for byte


NORMALIZE = [
    ("//a", "/a"),
    ("/a//b", "/a/b"),
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/../../a", "/a"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/a/b/", "/a/b/"),
]


@pytest.mark.parametrize("raw,forwarded", NORMALIZE)
def test_normalize(raw: str, forwarded: str) -> None:
    cp = canonicalize(raw.encode(), normalize=True)
    assert cp.raw == forwarded
    assert cp.decoded == forwarded


@pytest.mark.parametrize("raw", ["/a/%2e%2e/b", "/a%2fb", "/a\\b", "/a;b", "/a%00"])
def test_normalize_still_rejects_encoded_tricks(raw: str) -> None:
    with pytest.raises(Problem):
        canonicalize(raw.encode(), normalize=True)
