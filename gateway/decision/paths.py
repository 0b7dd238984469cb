"""The one canonicaliser: the path a policy evaluates is the path the upstream receives."""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.problems import Problem

_HEX = frozenset(b"0123456789abcdefABCDEF")
# Bytes an RFC 3986 path may hold literally; everything else must arrive percent-encoded.
_PCHAR = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,=:@/%"
)
# Percent-encoded bytes that change how a path splits or terminates once decoded:
# '.', '/', '\\', NUL and ';' (CVE-2021-41773 style traversal, Tomcat ';' parameters).
_FORBIDDEN_ESCAPES = frozenset({0x2E, 0x2F, 0x5C, 0x00, 0x3B})


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """A request path that passed canonicalisation.

    ``raw`` is forwarded byte for byte; ``decoded`` is what rules match against.
    """

    raw: str
    decoded: str


def _bad(detail: str) -> Problem:
    return Problem("non-canonical-path", detail=detail)


def _check_escapes(raw: bytes) -> None:
    i = 0
    n = len(raw)
    while True:
        i = raw.find(b"%", i)
        if i < 0:
            return
        if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
            raise _bad("the path holds a malformed percent-escape")
        value = int(raw[i + 1 : i + 3], 16)
        if value in _FORBIDDEN_ESCAPES:
            raise _bad("the path holds a percent-encoded '.', '/', '\\', ';' or NUL")
        if value == 0x25 and i + 4 < n and raw[i + 3] in _HEX and raw[i + 4] in _HEX:
            # '%25' followed by two hex digits decodes to another escape: double encoding.
            raise _bad("the path is double percent-encoded")
        if value < 0x20 or value == 0x7F:
            raise _bad("the path holds an encoded control character")
        i += 3


def _remove_dot_segments(segments: list[str]) -> list[str]:
    out: list[str] = []
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    return out


def canonicalize(raw_path: bytes, *, normalize: bool = False) -> CanonicalPath:
    """Validate ``raw_path`` (the request target's path, still percent-encoded).

    Strict mode rejects anything whose meaning an upstream could read differently
    from us. With ``normalize`` empty segments and dot segments are resolved
    instead (RFC 3986 §5.2.4) and the result is what gets forwarded.
    """
    return _canonicalize(bytes(raw_path), normalize)


@functools.lru_cache(maxsize=4096)
def _canonicalize(raw: bytes, normalize: bool) -> CanonicalPath:
    if not raw.startswith(b"/"):
        raise _bad("the path must start with '/'")
    for byte in raw:
        if byte not in _PCHAR:
            if byte == 0x5C:
                raise _bad("the path holds a backslash")
            if byte == 0x3B:
                raise _bad("the path holds ';' parameters")
            if byte == 0x23:
                raise _bad("the path holds a fragment")
            raise _bad("the path holds a byte that must be percent-encoded")
    _check_escapes(raw)
    text = raw.decode("ascii")
    segments = text.split("/")[1:]
    trailing = text.endswith("/") and len(text) > 1
    inner = segments[:-1] if trailing else segments
    dirty = any(seg in ("", ".", "..") for seg in inner) if text != "/" else False
    if dirty:
        if not normalize:
            raise _bad("the path holds an empty, '.' or '..' segment")
        kept = _remove_dot_segments(inner)
        text = "/" + "/".join(kept)
        if (trailing or inner[-1] in (".", "..")) and text != "/":
            text += "/"
    try:
        decoded = unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _bad("the path does not decode as UTF-8") from None
    if not decoded.isascii():
        _check_compatibility_forms(decoded)
    return CanonicalPath(raw=text, decoded=decoded)


def _check_compatibility_forms(decoded: str) -> None:
    """Reject characters that Unicode compatibility normalisation (NFKC, applied by some
    upstream frameworks and file systems) turns into ASCII: '%ef%bc%8e' is U+FF0E
    FULLWIDTH FULL STOP, which NFKC folds to '.', so '/%ef%bc%8e%ef%bc%8e/' would become
    '/../' behind the gateway's back, and a fullwidth 'ａdmin' would become 'admin' where
    the gateway matched something else (the CVE-2019-9636 family). Canonical
    compositions (an NFD 'é') fold to non-ASCII and stay allowed."""
    for segment in decoded.split("/"):
        if segment.isascii():
            continue
        folded = unicodedata.normalize("NFKC", segment)
        if sum(c.isascii() for c in folded) > sum(c.isascii() for c in segment):
            raise _bad("the path holds a character that Unicode normalisation (NFKC) turns "
                       "into ASCII, such as a fullwidth '.' or '/'")
