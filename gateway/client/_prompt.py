"""What the code callback is told (``CodePrompt``), what a wait hook is told (``Pause``),
and ``RESEND``, the answer that asks the gateway for a new delivered code."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final


class _Resend:
    """The type of ``RESEND``."""

    _instance: _Resend | None = None

    def __new__(cls) -> _Resend:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "RESEND"


RESEND: Final = _Resend()
"""Return this from the code callback to have a delivered code (sms, email, ...) sent again:
the client asks the gateway for a new challenge with the same ticket and factor (the old code
stops working) and calls the callback again with ``resent`` increased."""


@dataclass(frozen=True, eq=False)
class CodePrompt(Mapping[str, Any]):
    """The second argument of the code callback ``callback(factor, info)``.

    Attributes give the client's view (``retry``, ``attempt``, ``attempts_left``, ``error``,
    ``step`` of ``steps`` for ``all_of`` rules); mapping access (``info["hint"]``) reads the
    gateway's challenge document, as callbacks written for the first client did, with
    ``attempts_left`` kept current."""

    factor: str
    rule: str
    attempt: int = 1               # 1 for the first code asked for this challenge
    attempts_left: int | None = None
    hint: str | None = None        # "Code sent to +33 •• •• •• 89"
    resend_after: int | None = None  # set for delivered codes: seconds before RESEND works
    resent: int = 0                # how many times a new code was sent
    error: str | None = None       # why the previous answer was refused, for the person
    step: int = 1                  # all_of rules: which factor of how many
    steps: int = 1
    url: str = ""                  # the request being authorized, without its query
    challenge: Mapping[str, Any] = field(default_factory=dict)

    @property
    def retry(self) -> bool:
        """True when an earlier answer to this challenge was refused (or a wait passed)."""
        return self.attempt > 1

    @property
    def delivered(self) -> bool:
        """True for codes the gateway sent somewhere (these can be sent again)."""
        return self.resend_after is not None

    def __getitem__(self, key: str) -> Any:
        return self.challenge[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.challenge)

    def __len__(self) -> int:
        return len(self.challenge)

    def __repr__(self) -> str:
        return (f"CodePrompt(factor={self.factor!r}, rule={self.rule!r}, attempt={self.attempt}, "
                f"attempts_left={self.attempts_left!r}, step={self.step}/{self.steps})")


@dataclass(frozen=True)
class Pause:
    """The gateway answered 429 with ``Retry-After``: the client waits ``seconds``."""

    seconds: float
    status: int
    title: str
    detail: str | None
    problem: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        why = f"{self.title}: {self.detail}" if self.detail else self.title
        return f"{why}; waiting {self.seconds:g} s before trying again"
