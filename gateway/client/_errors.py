"""The client's errors. Every refusal names the gateway's problem (RFC 9457 title and
detail), so a message never reads just "refused".

    SecondFactorError          a step of the handshake failed; .response, .problem
     +-- BodyNotReplayable     a streamed request body met a 401 and cannot be sent again
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


def problem_of(response: httpx.Response | None) -> dict[str, Any]:
    """The problem+json document of a (read) response, or ``{}``."""
    if response is None:
        return {}
    try:
        doc = response.json()
    except (ValueError, httpx.ResponseNotRead, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def describe(problem: Mapping[str, Any], response: httpx.Response | None) -> str:
    """``Wrong code (403): the code is not valid; 4 attempts left`` — title, status, detail
    and the members a person can act on. Never codes, tokens or tickets."""
    status = problem.get("status") or (response.status_code if response is not None else None)
    title = problem.get("title")
    if not title and response is not None:
        title = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if not title:
        return ""
    text = f"{title} ({status})" if status and str(status) not in title else str(title)
    detail = problem.get("detail")
    if detail:
        text += f": {detail}"
    if isinstance(problem.get("attempts_left"), int):
        text += f"; {problem['attempts_left']} attempt(s) left"
    retry = problem.get("retry_after")
    if retry is None and response is not None:
        retry = response.headers.get("retry-after")
    if retry is not None:
        text += f"; retry after {retry} s"
    return text


class SecondFactorError(Exception):
    """The gateway refused a step of the handshake; ``response`` and ``problem`` (its
    problem+json document, ``{}`` when there is none) say why."""

    def __init__(self, message: str, response: httpx.Response | None = None,
                 problem: Mapping[str, Any] | None = None) -> None:
        self.response = response
        self.problem: dict[str, Any] = dict(problem) if problem is not None else problem_of(response)
        text = describe(self.problem, response)
        super().__init__(f"{message}: {text}" if text else message)

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None

    @property
    def title(self) -> str | None:
        return self.problem.get("title")

    @property
    def detail(self) -> str | None:
        return self.problem.get("detail")


class BodyNotReplayable(SecondFactorError):
    """A request with a streamed body got a 401: the body is gone and cannot be sent again.
    ``token_kept`` is true when a ``route``/``session`` token was obtained and kept anyway,
    so sending the request again (with a fresh stream) goes through without a code."""

    def __init__(self, message: str, response: httpx.Response | None = None,
                 token_kept: bool = False) -> None:
        super().__init__(message, response)
        self.token_kept = token_kept
