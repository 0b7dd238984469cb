"""problem+json (RFC 9457): every error the gateway itself produces is one of these."""

from __future__ import annotations

import json
from typing import Any

PROBLEM_TYPE_PREFIX = "urn:stepgate:problem:"

Headers = list[tuple[bytes, bytes]]


class Problem(Exception):
    """An error answered to the client; raised anywhere, rendered in one place."""

    def __init__(
        self,
        status: int,
        name: str,
        title: str,
        *,
        detail: str | None = None,
        headers: Headers | None = None,
        **extensions: Any,
    ) -> None:
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
    return Problem(404, "not-found", "Not found")


def bad_request(detail: str, name: str = "bad-request") -> Problem:
    return Problem(400, name, "Bad request", detail=detail)
