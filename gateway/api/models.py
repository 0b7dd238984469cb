"""The bodies the own endpoints take and give, as pydantic models: requests are validated
with them, answers are built through them, and the OpenAPI document is made from them.
What enrolling a factor takes and gives is the factor's own (gateway/factors/)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Binding = Literal["request", "route", "session"]


# ------------------------------------------------------------------ requests

class ChallengeCreate(BaseModel):
    """Start a challenge for the ticket of a 401 answer."""

    ticket: str = Field(min_length=1, max_length=4096,
                        description="the ticket from the 401 second-factor-required answer")
    factor: str | None = Field(None, min_length=1, max_length=64,
                               description="the factor to use; absent: the first of the "
                               "rule's factors the user has")


CODE_DESCRIPTION = ("the code: from the authenticator app, sent to the address, or a recovery "
                    "code")


class Answer(BaseModel):
    """A factor's answer, an open object: ``{"code": "123456"}`` for every factor that
    uses codes; other kinds of factor answer with their own members (WebAuthn:
    ``{"credential": {...}}``), which the factor checks."""

    model_config = ConfigDict(extra="allow")
    code: str | None = Field(None, min_length=1, max_length=64, description=CODE_DESCRIPTION)

    def mapping(self) -> dict[str, Any]:
        """What the factor gets: the members as sent, a null ``code`` left out."""
        out = dict(self.model_extra or {})
        if self.code is not None:
            out["code"] = self.code
        return out


class ConfirmAnswer(Answer):
    """The proof that confirms a pending factor; it cannot be empty."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"minProperties": 1})

    @model_validator(mode="after")
    def _something(self) -> ConfirmAnswer:
        if self.code is None and not self.model_extra:
            raise ValueError("expected the factor's answer, such as {\"code\": \"123456\"}, "
                             "found none")
        return self


class NoOptions(BaseModel):
    """No options: an empty JSON object, or no body at all."""


# ------------------------------------------------------------------ answers

class FactorDetails(BaseModel):
    """How a client uses one factor; members beyond ``type`` depend on the factor."""

    model_config = ConfigDict(extra="allow")
    type: str


class Serving(BaseModel):
    status: Literal["serving"]


class Readiness(BaseModel):
    status: Literal["ready"]
    rules: int = Field(description="policy rules loaded")


class ConfigDoc(BaseModel):
    factors: list[str] = Field(description="every second factor a rule may name")
    token_header: str
    prefix: str
    enrollment: Literal["open", "admin"]
    factor_details: list[FactorDetails] = Field(
        description="per factor, in the order of 'factors': how to enrol, confirm and answer")


class ChallengeCreated(BaseModel):
    """A started challenge; factors may add members (a delivered code adds
    ``resend_after``)."""

    model_config = ConfigDict(extra="allow")
    challenge_id: str
    factor: str
    expires_in: int
    attempts_left: int
    verify_uri: str
    hint: str | None = None
    resend_after: int | None = Field(None, description="seconds before asking again for the "
                                     "same ticket and factor sends a new code")


class ChallengeState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenge_id: str
    factor: str
    state: Literal["pending", "verified", "expired", "failed"]
    attempts_left: int
    expires_in: int


class TokenIssued(BaseModel):
    """The token to send in the token header when repeating the request."""

    model_config = ConfigDict(extra="forbid")
    token: str
    token_header: str
    expires_in: int
    binding: Binding
    uses: int | None = Field(description="how many requests the token may carry; null: any "
                             "number until it expires")
    status: Literal["verified"]


class FactorsRemaining(BaseModel):
    """One factor of an all_of rule is verified; the ticket needs the others too."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["verified"]
    remaining: list[str]
    challenge_uri: str


class FactorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: str
    status: Literal["pending", "active"]
    label: str
    created_at: str | None = Field(description="ISO 8601, UTC")
    last_used_at: str | None = Field(description="ISO 8601, UTC")


class RecoveryInfo(BaseModel):
    """The user's recovery codes, listed as one factor."""

    model_config = ConfigDict(extra="forbid")
    id: Literal["recovery"]
    type: Literal["recovery"]
    status: Literal["active"]
    label: str
    remaining: int


class FactorList(BaseModel):
    factors: list[FactorInfo | RecoveryInfo]


class Confirmed(BaseModel):
    """The factor is active. Confirming a user's first factor (no other active factor, no
    recovery codes) also answers a first set of recovery codes, shown this once."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: str
    status: Literal["active"]
    recovery_codes: list[str] | None = Field(
        None, description="only when this was the user's first factor: single-use recovery "
        "codes, XXXX-XXXX-XXXX-XXXX, shown once; keep them where the factor is not")


class UserFactors(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    factors: list[FactorInfo]
    recovery_codes_left: int
    failures: int
    hard_locked: bool
    locked_for: int | None = Field(description="seconds the lock still holds; null when "
                                   "hard-locked")


class UserReset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    removed: int = Field(description="factors and recovery codes removed")


class UserUnlocked(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    locked: Literal[False]


class AuditEvents(BaseModel):
    events: list[dict[str, Any]] = Field(description="oldest first; each has at least 'ts' "
                                         "and 'event'")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; extension members depend on the type."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="urn:stepgate:problem:<name>")
    title: str
    status: int
    detail: str | None = None
