"""problem+json (RFC 9457): every error the gateway itself produces is one of these.

The catalogue below is the one place a problem type gets its status and title: RFC 9457
§3.1.3 expects one title per type, so the same ``type`` never reads two ways. The
OpenAPI document lists the same catalogue.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.primitives import REQUEST_ID

PROBLEM_TYPE_PREFIX = "urn:stepgate:problem:"

Headers = list[tuple[bytes, bytes]]

CATALOGUE: dict[str, tuple[int, str]] = {
    # the request itself
    "bad-request": (400, "Bad request"),
    "bad-framing": (400, "Malformed HTTP request"),
    "non-canonical-path": (400, "Non-canonical request path"),
    "ambiguous-request": (400, "Ambiguous request"),
    "invalid-host": (400, "Invalid Host header"),
    "method-override": (400, "Method override refused"),
    "invalid-body": (400, "Invalid request body"),
    "invalid-query": (400, "Invalid query"),
    "invalid-ticket": (400, "Invalid ticket"),
    "invalid-address": (400, "Invalid address"),
    "factor-not-allowed": (400, "Factor not allowed for this rule"),
    "request-timeout": (408, "Request timeout"),
    "body-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "method-not-allowed": (405, "Method not allowed"),
    "not-found": (404, "Not found"),
    "unknown-factor": (404, "Unknown factor"),
    # who is asking, and what they may do
    "unauthenticated": (401, "Authentication required"),
    "second-factor-required": (401, "Second factor required"),
    "forbidden": (403, "Forbidden"),
    "factor-not-enrolled": (403, "Second factor not enrolled"),
    "enrollment-closed": (403, "Enrolment closed"),
    "wrong-code": (403, "Wrong code"),
    "code-already-used": (403, "Code already used"),
    "body-not-seen": (403, "Request body not available"),
    "forward-auth-refused": (403, "Not a trusted forward-auth caller"),
    "already-active": (409, "Factor already active"),
    "token-in-use": (409, "Token in use"),
    "challenge-gone": (410, "Challenge no longer usable"),
    "locked": (429, "Too many failed attempts"),
    "too-many-challenges": (429, "Too many challenges"),
    "too-many-sends": (429, "Too many codes sent"),
    "resend-too-soon": (429, "Code sent recently"),
    # the gateway and what it depends on
    "internal-error": (500, "Internal error"),
    "upstream-unavailable": (502, "Upstream unavailable"),
    "delivery-failed": (502, "Code delivery failed"),
    "store-unavailable": (503, "Service unavailable"),
    "not-ready": (503, "Not ready"),
    "upstream-busy": (503, "Upstream busy"),
    "too-many-connections": (503, "Too many connections"),
    "upstream-timeout": (504, "Upstream timeout"),
}


class Problem(Exception):
    """An error answered to the client; raised anywhere, rendered in one place. Its status
    and title come from the catalogue."""

    def __init__(self, name: str, *, detail: str | None = None, headers: Headers | None = None,
                 **extensions: Any) -> None:
        status, title = CATALOGUE[name]
        super().__init__(title if detail is None else f"{title}: {detail}")
        self.status = status
        self.name = name
        self.title = title
        self.detail = detail
        self.headers = headers or []
        self.extensions = extensions

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.name

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            doc["detail"] = self.detail
        doc.update(self.extensions)
        request_id = REQUEST_ID.get()
        if request_id is not None:
            doc["request_id"] = request_id
        return doc

    def render(self) -> tuple[int, Headers, bytes]:
        payload = json.dumps(self.body(), separators=(", ", ": ")).encode()
        headers: Headers = [
            (b"content-type", b"application/problem+json"),
            (b"cache-control", b"no-store"),
            (b"content-length", str(len(payload)).encode()),
        ]
        headers.extend(self.headers)
        return self.status, headers, payload


def not_found() -> Problem:
    return Problem("not-found")


def bad_request(detail: str, name: str = "bad-request") -> Problem:
    return Problem(name, detail=detail)


def too_large(limit: int) -> Problem:
    return Problem("body-too-large", detail=f"the body may hold at most {limit} bytes",
                   max_body=limit)


def code_reused(attempts_left: int | None) -> Problem:
    """A code accepted once, offered again: refused like a wrong code, but said apart, so the
    person waits for the next code instead of doubting the one they typed."""
    extra: dict[str, Any] = {} if attempts_left is None else {"attempts_left": attempts_left}
    return Problem("code-already-used", detail="this code has already been used; wait for the "
                   "next code from your authenticator app (a new one every 30 seconds)", **extra)


def retry_later(name: str, retry_after: float, detail: str) -> Problem:
    """A 429/503 whose Retry-After says, in whole seconds, when trying again can work."""
    seconds = max(1, int(retry_after + 0.999))
    return Problem(name, detail=detail, retry_after=seconds,
                   headers=[(b"retry-after", str(seconds).encode())])
