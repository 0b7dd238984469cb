"""``GET {prefix}/openapi.json``: the own endpoints as an OpenAPI 3.1 document, assembled
once at start-up from the pydantic models, the factor registry and the problem catalogue.

Every operation lists every status it can answer; an error status names the problem types
it can carry, so a client (or a contract test) can tell a documented refusal from a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.api.context import Context
from gateway.api.models import (
    Answer,
    AuditEvents,
    ChallengeCreate,
    ChallengeCreated,
    ChallengeState,
    ConfigDoc,
    ConfirmAnswer,
    Confirmed,
    FactorList,
    FactorsRemaining,
    NoOptions,
    ProblemDetails,
    Readiness,
    Serving,
    TokenIssued,
    UserFactors,
    UserReset,
    UserUnlocked,
)
from gateway.factors.base import enrols_as_text
from gateway.problems import CATALOGUE, PROBLEM_TYPE_PREFIX

Security = Literal["none", "user", "managed", "admin"]
Problems = dict[int, tuple[str, ...]]

# What any request under the prefix may meet before it reaches an endpoint: the server's
# framing and time limits, the canonical-path and header checks, the store.
COMMON: Problems = {
    400: ("bad-framing", "non-canonical-path", "ambiguous-request", "invalid-host"),
    408: ("request-timeout",),
    500: ("internal-error",),
    503: ("store-unavailable", "too-many-connections"),
}
JSON_BODY: Problems = {400: ("invalid-body",), 413: ("body-too-large",),
                       415: ("unsupported-media-type",)}
USER: Problems = {401: ("unauthenticated",)}
MANAGED: Problems = {401: ("unauthenticated", "second-factor-required"),
                     403: ("enrollment-closed",), 409: ("token-in-use",)}
ADMIN: Problems = {401: ("unauthenticated",), 404: ("not-found",)}

# Enrolments a terminal can show: ``Accept: text/plain`` or ``?format=text``; every
# enrolment refuses a bad ``format`` (400 invalid-query), text for a factor without one too.
TEXT = ("for a terminal (Accept: text/plain, or format=text): the QR code in Unicode half "
        "blocks, the secret, the otpauth URI, the factor id and the command that confirms it")
FORMAT: dict[str, Any] = {
    "name": "format", "description": "the answer's form: json (the default), or text for a "
    "terminal, where the factor has one (totp); without it, Accept decides",
    "schema": {"type": "string", "enum": ["json", "text"]}}
BAD_FORMAT: Problems = {400: ("invalid-query",)}

HEADERS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": "the challenge(s) to answer: Basic for the first factor, "
          "SecondFactor (and Bearer, RFC 9470) for a second-factor token"},
    405: {"Allow": "the methods the path accepts"},
    429: {"Retry-After": "seconds before trying again can work (absent for a lock only an "
          "administrator lifts)"},
    503: {"Retry-After": "seconds before trying again can work"},
}


@dataclass(frozen=True)
class Op:
    id: str
    method: str
    path: str  # relative to the prefix
    summary: str
    security: Security
    ok: dict[int, tuple[type[BaseModel], ...]]  # an empty tuple: no content
    problems: Problems
    body: tuple[type[BaseModel], ...] = ()
    body_required: bool = True
    params: dict[str, str] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    query: tuple[dict[str, Any], ...] = ()
    location: bool = False
    no_store: bool = True
    text: str | None = None  # a text/plain form of the 2xx answer, so described


def _merge(*parts: Problems) -> Problems:
    out: dict[int, list[str]] = {}
    for part in parts:
        for status, names in part.items():
            out.setdefault(status, [])
            out[status] += [n for n in names if n not in out[status]]
    return {status: tuple(names) for status, names in sorted(out.items())}


def operations(ctx: Context) -> list[Op]:
    """Every operation the router serves (tests hold the two to each other)."""
    registry = ctx.factors
    enrol_bodies = tuple(dict.fromkeys(f.enrol_body for f in registry.values()))
    enrolled = tuple(dict.fromkeys(f.enrolled for f in registry.values()))
    factor = {"factor": "a factor type GET /config lists (POST), or a factor id from GET "
              "/factors or 'recovery' (DELETE)"}
    as_text = any(enrols_as_text(f) for f in registry.values())
    ops = [
        Op("health", "GET", "/health", "200 while the process serves (for probes)", "none",
           {200: (Serving,)}, _merge(COMMON)),
        Op("ready", "GET", "/ready", "200 when policies are loaded and the store (and Redis) "
           "answered a real round trip; else 503 not-ready naming what is down", "none",
           {200: (Readiness,)}, _merge(COMMON, {503: ("not-ready",)})),
        Op("config", "GET", "/config", "Factors, token header, prefix, enrolment mode",
           "none", {200: (ConfigDoc,)}, _merge(COMMON), no_store=False),
        Op("openapi", "GET", "/openapi.json", "This document", "none", {200: ()},
           _merge(COMMON), no_store=False),
        Op("create_challenge", "POST", "/challenges", "Start a challenge for a ticket", "user",
           {201: (ChallengeCreated,)}, _merge(COMMON, JSON_BODY, USER, {
               400: ("invalid-ticket", "factor-not-allowed"), 403: ("factor-not-enrolled",),
               429: ("locked", "too-many-challenges", "too-many-sends", "resend-too-soon"),
               502: ("delivery-failed",)}),
           body=(ChallengeCreate,), location=True),
        Op("challenge_state", "GET", "/challenges/{challenge_id}", "A challenge's state",
           "user", {200: (ChallengeState,)}, _merge(COMMON, USER, {404: ("not-found",)}),
           params={"challenge_id": "from the 201 answer; another user's id is not found"}),
        Op("verify", "POST", "/challenges/{challenge_id}/verify",
           "Answer a challenge: a token, or the factors an all_of rule still needs", "user",
           {200: (TokenIssued, FactorsRemaining)}, _merge(COMMON, JSON_BODY, USER, {
               403: ("wrong-code", "code-already-used"), 404: ("not-found",),
               410: ("challenge-gone",), 429: ("locked",)}),
           body=(Answer,), params={"challenge_id": "from the 201 answer"}),
        Op("list_factors", "GET", "/factors", "The user's factors", "user",
           {200: (FactorList,)}, _merge(COMMON, USER)),
        Op("enrol", "POST", "/factors/{factor}",
           "Enrol a factor (the body and answer depend on the factor)", "managed",
           {201: enrolled}, _merge(COMMON, JSON_BODY, MANAGED, {
               400: ("invalid-address",), 404: ("unknown-factor",), 429: ("too-many-sends",),
               502: ("delivery-failed",)}, BAD_FORMAT),
           body=enrol_bodies, body_required=False, params=factor,
           examples={"factor": list(registry)}, query=(FORMAT,) if as_text else (),
           text=TEXT if as_text else None),
        Op("delete_factor", "DELETE", "/factors/{factor}",
           "Remove a factor, or the recovery codes ('recovery'); revokes the user's tokens",
           "managed", {204: ()}, _merge(COMMON, MANAGED, {
               400: ("invalid-body",), 404: ("not-found",), 413: ("body-too-large",)}),
           params=factor),
        Op("confirm", "POST", "/factors/{factor_id}/confirm",
           "Confirm a pending factor with the factor's answer", "user", {200: (Confirmed,)},
           _merge(COMMON, JSON_BODY, USER, {
               403: ("wrong-code", "code-already-used"), 404: ("not-found",),
               409: ("already-active",), 410: ("challenge-gone",), 429: ("locked",)}),
           body=(ConfirmAnswer,), params={"factor_id": "from the enrolment's answer"}),
        Op("recovery_codes", "POST", "/recovery-codes",
           "A new set of recovery codes, shown once", "managed",
           # a format parameter is refused here too: the codes have no text form
           {201: (registry["recovery"].enrolled,)}, _merge(COMMON, JSON_BODY, MANAGED, BAD_FORMAT),
           body=(NoOptions,), body_required=False),
        Op("admin_user_factors", "GET", "/admin/users/{user}/factors",
           "A user's factors, recovery codes left, failures and lock", "admin",
           {200: (UserFactors,)}, _merge(COMMON, ADMIN), params={"user": "the user name"}),
        Op("admin_reset", "DELETE", "/admin/users/{user}/factors",
           "Remove a user's factors, recovery codes and lock; revokes the user's tokens",
           "admin", {200: (UserReset,)}, _merge(COMMON, ADMIN),
           params={"user": "the user name"}),
        Op("admin_unlock", "POST", "/admin/users/{user}/unlock",
           "Lift a user's lock; revokes the user's tokens", "admin", {200: (UserUnlocked,)},
           _merge(COMMON, JSON_BODY, ADMIN), body=(NoOptions,), body_required=False,
           params={"user": "the user name"}),
        Op("admin_audit", "GET", "/admin/audit", "Audit events kept in the store", "admin",
           {200: (AuditEvents,)}, _merge(COMMON, ADMIN, {400: ("invalid-query",)}),
           query=(
               {"name": "user", "schema": {"type": "string"}},
               {"name": "since", "description": "epoch seconds or ISO 8601",
                "schema": {"type": "string"}},
               {"name": "until", "description": "epoch seconds or ISO 8601",
                "schema": {"type": "string"}},
               {"name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                            "default": 100}},
           )),
    ]
    # Each factor's own enrolment, with its own body and answer, beside the generic one.
    for name, impl in registry.items():
        text = enrols_as_text(impl)
        ops.append(Op(f"enrol_{name}", "POST", f"/factors/{name}", f"Enrol {name}", "managed",
                      {201: (impl.enrolled,)}, _merge(COMMON, JSON_BODY, MANAGED, {
                          400: ("invalid-address",), 429: ("too-many-sends",),
                          502: ("delivery-failed",)} if impl.delivers else {}, BAD_FORMAT),
                      body=(impl.enrol_body,), body_required=False,
                      query=(FORMAT,) if text else (), text=TEXT if text else None))
    return ops


def problem_types() -> list[dict[str, Any]]:
    return [{"name": name, "type": PROBLEM_TYPE_PREFIX + name, "status": status, "title": title}
            for name, (status, title) in CATALOGUE.items()]


class _Schemas:
    """components/schemas from the models, each named once."""

    def __init__(self, ops: list[Op]) -> None:
        wanted: dict[tuple[type[BaseModel], Literal["validation", "serialization"]], None] = {}
        for op in ops:
            for model in op.body:
                wanted[(model, "validation")] = None
            for models in op.ok.values():
                for model in models:
                    wanted[(model, "serialization")] = None
        wanted[(ProblemDetails, "serialization")] = None
        refs, top = models_json_schema(list(wanted), ref_template="#/components/schemas/{model}")
        self.refs = refs
        self.schemas: dict[str, Any] = top.get("$defs", {})
        self.schemas["ProblemDetails"]["properties"]["type"]["enum"] = [
            p["type"] for p in problem_types()]

    def of(self, models: tuple[type[BaseModel], ...],
           mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        refs = [self.refs[(m, mode)] for m in models]
        return refs[0] if len(refs) == 1 else {"anyOf": refs}


def _responses(op: Op, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, models in op.ok.items():
        resp: dict[str, Any] = {"description": "success"}
        if models:
            resp["content"] = {"application/json": {"schema": schemas.of(models, "serialization")}}
            if op.text is not None:
                resp["content"]["text/plain"] = {"schema": {"type": "string",
                                                            "description": op.text}}
        elif status != 204:
            resp["content"] = {"application/json": {"schema": {"type": "object"}}}
        headers: dict[str, Any] = {}
        if op.no_store and status != 204:
            headers["Cache-Control"] = {"description": "no-store", "schema": {"type": "string"}}
        if op.location:
            headers["Location"] = {"required": True, "description": "the challenge's URI",
                                   "schema": {"type": "string"}}
        if headers:
            resp["headers"] = headers
        out[str(status)] = resp
    for status, names in op.problems.items():
        schema = {"allOf": [{"$ref": "#/components/schemas/ProblemDetails"}],
                  "properties": {"type": {"enum": [PROBLEM_TYPE_PREFIX + n for n in names]},
                                 "status": {"const": status}}}
        resp = {"description": "; ".join(f"{n}: {CATALOGUE[n][1]}" for n in names),
                "content": {"application/problem+json": {"schema": schema}}}
        if status in HEADERS:
            resp["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in HEADERS[status].items()}
        out[str(status)] = resp
    return out


def _security(op: Op) -> list[dict[str, list[str]]]:
    if op.security == "none":
        return []
    if op.security == "admin":
        return [{"adminKey": []}]
    if op.security == "managed":
        return [{"identity": [], "manageToken": []}, {"identity": []}]
    return [{"identity": []}]


def document(ctx: Context, ops: list[Op]) -> dict[str, Any]:
    settings = ctx.settings
    schemas = _Schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        operation: dict[str, Any] = {
            "operationId": op.id, "summary": op.summary, "security": _security(op),
            "responses": _responses(op, schemas)}
        params: list[dict[str, Any]] = []
        for name, text in op.params.items():
            param: dict[str, Any] = {"name": name, "in": "path", "required": True,
                                     "description": text, "schema": {"type": "string"}}
            if name in op.examples:
                param["schema"]["examples"] = op.examples[name]
            params.append(param)
        params += [{"in": "query", **q} for q in op.query]
        if params:
            operation["parameters"] = params
        if op.body:
            operation["requestBody"] = {
                "required": op.body_required,
                "description": "application/json; an empty body means {}" if not
                op.body_required else "application/json",
                "content": {"application/json": {"schema": schemas.of(op.body, "validation")}}}
        paths.setdefault(settings.prefix + op.path, {})[op.method.lower()] = operation
    if settings.header_identity is not None:
        identity: dict[str, Any] = {"type": "apiKey", "in": "header",
                                    "name": settings.header_identity.name,
                                    "description": "the user, set by a trusted proxy"}
    else:
        identity = {"type": "http", "scheme": "basic",
                    "description": "the same credentials as for the protected API"}
    try:
        version = metadata.version("stepgate")
    except metadata.PackageNotFoundError:
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stepgate", "version": version,
                 "description": "The gateway's own endpoints (docs/protocol.md). Errors are "
                 "problem+json (RFC 9457); x-problem-types lists every type."},
        "paths": paths,
        "components": {
            "schemas": schemas.schemas,
            "securitySchemes": {
                "identity": identity,
                "manageToken": {"type": "apiKey", "in": "header", "name": settings.token_header,
                                "description": "a token for the rule stepgate:manage, needed "
                                "once the user has a factor"},
                "adminKey": {"type": "http", "scheme": "bearer",
                             "description": "the admin key; without one configured the admin "
                             "API does not exist"},
            },
        },
        "x-problem-types": problem_types(),
    }
