"""The Factor interface: every step a kind of second factor takes (docs/protocol.md).

A factor enrols (a pending record, or state it keeps itself), confirms the enrolment,
starts a challenge and verifies an answer given as a mapping (``{"code": "..."}`` today,
``{"credential": {...}}`` for WebAuthn). The endpoints only ever call these steps and read
the generic attributes below, so a new factor is a module and a registration, never a
change to the endpoints. Throttling stays with the caller: a factor that ``delivers``
sends a message when a challenge starts, and the caller counts that send against the
user's limit and applies the resend policy.

A factor's ``FactorRecord.data`` is a JSON document it owns; secrets in it are sealed
one member at a time with the data key ring, under associated data that names the user
and the factor, so a sealed value copied to another row does not open.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from gateway.keys import KeyRing
from gateway.problems import bad_request
from gateway.store import ChallengeRecord, FactorRecord

Answer = Mapping[str, Any]


@dataclass(frozen=True)
class Verification:
    ok: bool
    factor_id: str | None = None  # the record that answered: its last use is recorded
    # The answer was right once but has been used already (a TOTP step accepted before):
    # refused, yet no evidence of guessing, so the caller spends no attempt on it.
    reused: bool = False


def outcome(result: bool | Verification) -> Verification:
    """What ``Factor.confirm`` answered, as a Verification (a plain bool says right or
    wrong; a Verification can also say the answer was a replay)."""
    return result if isinstance(result, Verification) else Verification(result)


@dataclass
class Started:
    """A challenge as the factor started it."""

    factor_id: str | None = None  # the record the challenge is for, if one
    code_hash: str | None = None  # what verify compares with (a delivered code's MAC)
    ttl: float | None = None  # caps the challenge's lifetime (a delivered code's validity)
    extra: dict[str, Any] = field(default_factory=dict)  # added to the answer: hint, options


@dataclass
class Enrolment:
    """What ``enrol`` made. With a ``record`` the caller stores it as pending and answers
    201 with its id, status and confirm URI added to ``reply``; when ``challenge`` is set
    it first starts a challenge for the new record (a code sent to the new address), and
    confirming answers that challenge. A factor without records (recovery codes) keeps
    its own state and names its audit ``event``."""

    reply: dict[str, Any]
    record: FactorRecord | None = None
    challenge: bool = False
    event: str = "factor_added"
    details: dict[str, Any] = field(default_factory=dict)
    notice: str | None = None  # announced to the user out of band at once
    # ``reply`` for a terminal (``Accept: text/plain``), from a factor whose class sets
    # ``text_enrolment = True``; the caller adds the factor id and the confirm command.
    text: str | None = None


class Factor(Protocol):
    type: str
    # Starting a challenge sends a message: counted against the user's send limit, and a
    # second challenge for the same ticket waits ``resend_after`` and voids the first.
    delivers: bool

    # Read-only, so a factor may name its own models; ``builtins`` because inside this
    # class ``type`` is the factor's name.
    @property
    def enrol_body(self) -> builtins.type[BaseModel]:
        """What enrolling takes, validated before ``enrol`` is called."""
        ...

    @property
    def enrolled(self) -> builtins.type[BaseModel]:
        """The 201 answer to an enrolment."""
        ...

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        """Whether the user has this factor active."""
        ...

    def describe(self, prefix: str) -> dict[str, Any]:
        """How a client uses this factor, for ``GET {prefix}/config``."""
        ...

    async def enrol(self, user: str, factor_id: str, body: Mapping[str, Any],
                    now: float) -> Enrolment:
        """Begin an enrolment from the validated ``enrol_body``; creates nothing yet."""
        ...

    async def confirm(self, record: FactorRecord, challenge: ChallengeRecord | None,
                      answer: Answer, now: float) -> bool | Verification:
        """Whether ``answer`` proves the pending ``record`` (``challenge``: the one started
        at enrolment, if the enrolment asked for one; the caller makes it single use); a
        Verification when there is more to say (``reused``)."""
        ...

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        """Start a challenge for ``records``: the user's active records of this type, or
        the one record being enrolled when its ``Enrolment`` asked for a challenge."""
        ...

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     answer: Answer, now: float) -> Verification: ...


def enrols_as_text(factor: Factor) -> bool:
    """Whether a factor's enrolment also has a terminal form (``Enrolment.text``): an
    optional class attribute ``text_enrolment``, so factors without one need not say so."""
    return getattr(factor, "text_enrolment", False) is True


class Channel(Protocol):
    """A delivered-code channel as notifications use it: it reaches a user at the address
    a record of its type holds (OWASP: factor changes are announced out of band)."""

    def address_of(self, record: FactorRecord) -> str: ...

    async def send(self, address: str, message: str) -> None: ...


def code_of(answer: Answer) -> str:
    """The ``code`` member every code-based factor answers with."""
    code = answer.get("code")
    if not isinstance(code, str) or not code:
        raise bad_request("expected a string member 'code' holding the code, found none",
                          "invalid-body")
    return code


def seal_data(keys: KeyRing, associated: str, **members: str) -> str:
    """A factor data document whose members are sealed under ``associated``."""
    return json.dumps({name: keys.encrypt(value.encode(), associated)
                       for name, value in members.items()})


def open_data(keys: KeyRing, data: str, member: str, associated: str) -> str:
    """One sealed member of a factor data document (ValueError when it does not open)."""
    try:
        sealed = json.loads(data)[member]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"factor data has no sealed '{member}'") from None
    return keys.decrypt(sealed, associated).decode()
