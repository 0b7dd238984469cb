"""Request bodies of the own endpoints: JSON only, at most 16 KiB, validated by a pydantic
model; every failure is a problem+json 4xx that says what was expected and what was
found, never a 422 or a 500, and never echoes the value (it may be a code or a secret).
Also the form of answer a request asks for (``format``, ``Accept``), refused the same way."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.factors.base import Factor, enrols_as_text
from gateway.problems import Problem, bad_request, too_large

JSON_LIMIT = 16 * 1024
M = TypeVar("M", bound=BaseModel)


def require_json(request: Request) -> None:
    """Every POST under the prefix acts on credentials, so it must declare a JSON body,
    even an empty one: an HTML form can only send simple content types, and anything
    else needs a CORS preflight the gateway never grants — with this, a cross-site form
    riding on cached Basic credentials cannot change anything (CSRF)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not (ctype.startswith("application/") and
                                             ctype.endswith("+json")):
        raise Problem("unsupported-media-type",
                      detail="expected Content-Type application/json (an empty body is "
                      "allowed where the body is optional)")


async def read_body(request: Request, limit: int = JSON_LIMIT) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` (413), whatever
    Content-Length announced. A client leaving mid-body raises starlette's
    ClientDisconnect, which the router absorbs."""
    length = request.headers.get("content-length", "")
    if length.strip().isdigit() and int(length) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def invalid(detail: str) -> Problem:
    return bad_request(detail, "invalid-body")


def decode(body: bytes, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}`` where the body is optional."""
    if not body.strip():
        if optional:
            return {}
        raise invalid("expected a JSON object body, found an empty body")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid("expected a JSON object body, found invalid JSON") from None
    if not isinstance(doc, dict):
        raise invalid(f"expected a JSON object body, found {_kind(doc)}")
    return doc


def validate(model: type[M], doc: dict[str, Any]) -> M:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise invalid(describe(exc.errors(include_url=False))) from None


async def parse(request: Request, model: type[M], *, optional: bool = False) -> M:
    return validate(model, decode(await read_body(request), optional=optional))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _expected(kind: str, ctx: dict[str, Any], message: str) -> str:
    if kind == "string_type":
        return "a string"
    if kind == "string_too_short":
        return f"a string of at least {ctx.get('min_length')} character(s)"
    if kind == "string_too_long":
        return f"a string of at most {ctx.get('max_length')} characters"
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "an object"
    if kind == "list_type":
        return "a list"
    return message[:1].lower() + message[1:]


def describe(errors: Sequence[Any]) -> str:
    """The first validation error in words: which member, what was expected, what kind of
    value was found."""
    error = errors[0]
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"expected a member '{where}', found none"
    if not where:  # a rule about the whole body
        return str(error["msg"]).removeprefix("Value error, ")
    expected = _expected(kind, error.get("ctx") or {}, str(error["msg"]))
    return f"expected '{where}' to be {expected}, found {_kind(error.get('input'))}"


# ------------------------------------------------------------------ answer forms

_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def accept_weight(accept: str, media: str) -> float:
    """The weight ``accept`` gives ``media``: its most specific matching range wins (RFC
    9110 §12.5.1); a range with a malformed weight is skipped."""
    main = media.split("/")[0]
    best, rank = 0.0, -1
    for item in accept.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        name = name.lower()
        specific = {media: 2, f"{main}/*": 1, "*/*": 0}.get(name)
        if specific is None or specific <= rank:
            continue
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                weight = float(value.strip()) if _QVALUE.fullmatch(value.strip()) else -1.0
        if weight >= 0:
            best, rank = weight, specific
    return best


def answer_format(request: Request, factor: Factor) -> str:
    """``json`` or ``text``: the ``format`` query parameter if given (an order: a factor
    without a text form refuses ``text``), else what ``Accept`` prefers (a preference: JSON,
    the default, wins ties and stands in where there is no text form)."""
    given = request.query_params.getlist("format")
    if len(given) > 1:
        raise bad_request(f"expected one 'format' parameter, found {len(given)}",
                          "invalid-query")
    if given:
        if given[0] not in ("json", "text"):
            raise bad_request("expected 'format' to be 'json' or 'text', found "
                              f"{_kind(given[0])}", "invalid-query")
        if given[0] == "text" and not enrols_as_text(factor):
            raise bad_request(f"expected 'format' to be 'json': enrolling {factor.type} has no "
                              "text form", "invalid-query")
        return given[0]
    accept = request.headers.get("accept", "")
    if enrols_as_text(factor) and \
            accept_weight(accept, "text/plain") > accept_weight(accept, "application/json"):
        return "text"
    return "json"
