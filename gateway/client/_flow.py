"""The 401 handshake (docs/protocol.md) as one generator of steps — send a request, read a response,
ask for a code, wait — that the sync and async drivers in ``_auth`` perform, so both
clients share one logic and the logic itself does no I/O."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import logging
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.client._cache import KEPT_BINDINGS, CachedToken, RouteMemo, TokenCache, TokenKey
from gateway.client._errors import BodyNotReplayable, SecondFactorError, problem_of
from gateway.client._prompt import RESEND, CodePrompt, Pause

log = logging.getLogger("stepgate.client")

PROBLEM = "urn:stepgate:problem:"


@dataclass
class Send:
    """Send this request; the answer is the response (its body not read yet)."""

    request: httpx.Request


@dataclass
class Read:
    """Read this response's body."""

    response: httpx.Response


@dataclass
class Ask:
    """Call the code callback; the answer is what it returned."""

    prompt: CodePrompt


Step = Send | Read | Ask | Pause
Steps = Generator[Step, Any, Any]

try:  # multipart bodies re-render from their (seekable) files, so they can be sent again
    from httpx._multipart import MultipartStream as _Replayable
except ImportError:  # pragma: no cover - a future httpx
    _Replayable = httpx.ByteStream  # type: ignore[misc, assignment]


def origin_of(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def same_origin(base: httpx.URL, ref: Any, what: str) -> httpx.URL:
    """``ref`` resolved against the request URL; refused unless it stays on the gateway's
    origin, so credentials and codes never travel anywhere the gateway did not answer from."""
    if not isinstance(ref, str) or not ref:
        raise SecondFactorError(f"the gateway's answer names no {what}")
    url = base.join(ref)
    if origin_of(url) != origin_of(base):
        raise SecondFactorError(f"the gateway's {what} points to another origin "
                                f"({origin_of(url)}); the client sends credentials and codes "
                                f"only to {origin_of(base)}")
    return url


def user_of(headers: httpx.Headers) -> str:
    """Whose tokens: the Basic user name, else a digest of the Authorization header (kept
    tokens never cross identities), else nobody."""
    value = headers.get("authorization")
    if not value:
        return ""
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(rest.strip(), validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            pass
    return "#" + hashlib.sha256(value.encode("latin-1", "replace")).hexdigest()[:20]


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from ``Retry-After`` (delay-seconds or an HTTP-date, RFC 9110 §10.2.3)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def challenge_of(response: httpx.Response) -> dict[str, Any] | None:
    """The challenge of a 401: its problem+json body, or — where an ingress replaced the
    body (nginx auth_request keeps only the first WWW-Authenticate field) — the parameters
    of its SecondFactor challenge."""
    doc = problem_of(response)
    if doc.get("type") == PROBLEM + "second-factor-required":
        return doc
    if response.status_code != 401:
        return None
    for value in response.headers.get_list("www-authenticate"):
        params = second_factor_params(value)
        if params is not None and params.get("ticket") and params.get("challenge_uri"):
            out: dict[str, Any] = dict(params)
            out["factors"] = params.get("factors", "").split()
            out.setdefault("binding", "request")  # unknown: never kept, the safe reading
            return out
    return None


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


def second_factor_params(value: str) -> dict[str, str] | None:
    """The auth-params of a ``SecondFactor`` challenge (RFC 9110 §11.2), or None for
    another scheme."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "secondfactor":
        return None
    out: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            break
        quoted, token = m.group(2), m.group(3)
        out.setdefault(m.group(1).lower(), re.sub(r"\\(.)", r"\1", quoted)
                       if quoted is not None else token)
        pos = m.end()
    return out


@dataclass
class _Challenge:
    doc: dict[str, Any]
    state: httpx.URL | None  # GET it for the challenge's state


class _Call:
    """One request being authorized, and what its handshake has used up."""

    def __init__(self, request: httpx.Request, user: str | None) -> None:
        self.request = request
        self.url = request.url
        self.origin = origin_of(request.url)
        self.user = user if user is not None else user_of(request.headers)
        self.method = request.method
        self.path = request.url.raw_path.partition(b"?")[0].decode("ascii", "replace")
        self.replayable = isinstance(request.stream, httpx.ByteStream | _Replayable)
        self.waited = 0.0
        self.headers = {"Accept": "application/json"}
        if "authorization" in request.headers:
            self.headers["Authorization"] = request.headers["authorization"]

    def post(self, url: httpx.URL, body: Mapping[str, Any]) -> httpx.Request:
        return httpx.Request("POST", url, json=dict(body), headers=self.headers)

    def get(self, url: httpx.URL) -> httpx.Request:
        return httpx.Request("GET", url, headers=self.headers)


class Handshake:
    """What one StepgateAuth knows across requests: its kept tokens, which rule each
    request was challenged for, and its settings."""

    def __init__(self, *, cache: TokenCache, factor: Sequence[str], max_wait: float,
                 max_rounds: int, user: str | None, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.memo = RouteMemo()
        self.factor = tuple(factor)
        self.max_wait = max_wait
        self.max_rounds = max_rounds
        self.user = user
        self.clock = clock

    # ------------------------------------------------------------ kept tokens

    def kept(self, key: TokenKey) -> CachedToken | None:
        token = self.cache.get(key)
        if token is not None and not token.usable(self.clock()):
            self.cache.drop(key)
            return None
        return token

    def settle(self, key: TokenKey, token: CachedToken, status: int) -> None:
        """Count a use the gateway spent: an answer below 400 spends it, a failure gives it
        back (docs/protocol.md, counted tokens)."""
        if token.uses_left is None or status >= 400:
            return
        after = token.spent()
        if after.uses_left is not None and after.uses_left <= 0:
            self.cache.drop(key)
        else:
            self.cache.put(key, after)

    # ------------------------------------------------------------ the request

    def run(self, request: httpx.Request) -> Steps:
        """Send ``request``, answering 401 challenges; ends after the final response."""
        call = _Call(request, self.user)
        sent: tuple[TokenKey, CachedToken] | None = None
        rule = self.memo.rule(call.origin, call.user, call.method, call.path)
        if rule is not None:
            key = TokenKey(call.origin, call.user, rule)
            token = self.kept(key)
            if token is not None and token.header not in request.headers:
                request.headers[token.header] = token.value
                sent = (key, token)
        tried: set[TokenKey] = {sent[0]} if sent else set()
        handshakes = 0
        while True:
            response = yield Send(request)
            challenge = None
            if response.status_code == 401:
                yield Read(response)
                challenge = challenge_of(response)
            if challenge is None:
                if sent is not None:
                    self.settle(*sent, response.status_code)
                return
            rule = str(challenge.get("rule") or "")
            binding = str(challenge.get("binding") or "request")
            key = TokenKey(call.origin, call.user, rule)
            keep = binding in KEPT_BINDINGS
            self.memo.learn(call.origin, call.user, call.method, call.path, rule if keep else None)
            if sent is not None:
                old_key, old = sent
                del request.headers[old.header]
                if old_key == key:
                    self.cache.drop(key)
                    log.info("the gateway refused the kept token for rule %r (%s)", rule,
                             challenge.get("detail") or "no reason given")
                sent = None
            token = None
            if keep and key not in tried:
                tried.add(key)
                token = self.kept(key)
            if token is None:
                if not call.replayable and not keep:
                    raise BodyNotReplayable(
                        f"rule {rule!r} binds its token to the exact request, body included, "
                        "and this request's body was streamed, so it cannot be sent again; pass "
                        "the body as bytes (content=..., json=...) for such routes", response)
                if handshakes >= self.max_rounds:
                    raise SecondFactorError(f"the gateway refused the token it issued for rule "
                                            f"{rule!r}", response)
                handshakes += 1
                token = yield from self.handshake(call, challenge, response)
                tried.add(key)
                if keep:
                    self.cache.put(key, token)
            if not call.replayable:
                raise BodyNotReplayable(
                    f"rule {rule!r} asked for a second factor after this request's streamed "
                    f"body was sent; a {binding} token for it is kept now, so send the request "
                    "again with a fresh body and it goes through", response, token_kept=True)
            request.headers[token.header] = token.value
            sent = (key, token) if keep else None

    # ------------------------------------------------------------ the handshake

    def handshake(self, call: _Call, challenge: Mapping[str, Any],
                  response: httpx.Response) -> Steps:
        """Challenge, answer, verify — every factor of an ``all_of`` rule in turn — and
        return the issued token."""
        ticket = challenge.get("ticket")
        if not isinstance(ticket, str) or not ticket:
            raise SecondFactorError("the gateway's challenge carries no ticket", response)
        create = same_origin(call.url, challenge.get("challenge_uri"), "challenge_uri")
        rule = str(challenge.get("rule") or "")
        factors = [str(f) for f in challenge.get("factors") or []]
        steps = len(factors) if challenge.get("all_of") else 1
        factor = None if challenge.get("all_of") else next(
            (f for f in self.factor if f in factors), None)
        step = 1
        for _ in range(steps + 1):
            started = yield from self.create(call, create, ticket, factor)
            verified, result = yield from self.answer(call, create, ticket, started, rule,
                                                      step, steps)
            if "token" in result:
                return CachedToken.issued(result, self.clock())
            remaining = [str(f) for f in result.get("remaining") or []]
            if not remaining:
                break
            factor = remaining[0]
            step = max(step + 1, steps - len(remaining) + 1)
            if result.get("challenge_uri"):
                create = same_origin(call.url, result["challenge_uri"], "challenge_uri")
        raise SecondFactorError(f"the handshake for rule {rule!r} ended without a token", verified)

    def create(self, call: _Call, url: httpx.URL, ticket: str, factor: str | None) -> Steps:
        """``POST {challenge_uri}``: the challenge document and the URL of its state (for a
        delivered code the gateway sends the code now; asking again for the same ticket and
        factor sends a new one)."""
        body = {"ticket": ticket, **({"factor": factor} if factor else {})}
        while True:
            created = yield Send(call.post(url, body))
            yield Read(created)
            if created.status_code == 201:
                doc = problem_of(created)
                if not isinstance(doc.get("factor"), str):
                    raise SecondFactorError("the gateway's challenge names no factor", created)
                location = created.headers.get("location")
                state = same_origin(call.url, location, "challenge location") if location else None
                return _Challenge(doc, state)
            if created.status_code != 429:
                raise SecondFactorError("the gateway refused to start a challenge", created)
            yield from self.wait(call, created, "the gateway refused to start a challenge")

    def answer(self, call: _Call, create: httpx.URL, ticket: str, challenge: _Challenge,
               rule: str, step: int, steps: int) -> Steps:
        """Ask for the code until the gateway accepts one, attempts run out, or the
        callback gives the refused code again; returns the verify response and document."""
        attempt, resent = 1, 0
        error: str | None = None
        refused: object = None
        last: httpx.Response | None = None
        doc = challenge.doc
        attempts_left = doc.get("attempts_left")
        while True:
            verify = same_origin(call.url, doc.get("verify_uri"), "verify_uri")
            view = dict(doc)
            if attempts_left is not None:
                view["attempts_left"] = attempts_left
            resend_after = doc.get("resend_after")
            answer = yield Ask(CodePrompt(
                factor=str(doc["factor"]), rule=rule, attempt=attempt,
                attempts_left=attempts_left if isinstance(attempts_left, int) else None,
                hint=doc.get("hint"), resend_after=resend_after if isinstance(resend_after, int)
                else None, resent=resent, error=error, step=step, steps=steps,
                url=f"{call.origin}{call.path}", challenge=view))
            if answer is RESEND:
                challenge = yield from self.create(call, create, ticket, str(doc["factor"]))
                doc = challenge.doc
                attempt, error, refused = 1, None, None
                attempts_left = doc.get("attempts_left")
                resent += 1
                continue
            if answer is None or answer == "":
                raise SecondFactorError(f"no answer was given for the {doc['factor']} challenge")
            if refused is not None and answer == refused:
                # The code just refused, again: the gateway would refuse it and count it.
                raise SecondFactorError("the gateway did not accept the code", last)
            body = dict(answer) if isinstance(answer, Mapping) else {"code": str(answer)}
            last = yield Send(call.post(verify, body))
            yield Read(last)
            if last.status_code == 200:
                return last, problem_of(last)
            problem = problem_of(last)
            if last.status_code == 429:
                yield from self.wait(call, last, "the gateway did not accept the code")
                attempts_left = yield from self.refresh(call, challenge, attempts_left)
                refused = None
            else:
                left = problem.get("attempts_left")
                if not (last.status_code == 403 and problem.get("type") == PROBLEM + "wrong-code"
                        and isinstance(left, int) and left > 0):
                    raise SecondFactorError("the gateway did not accept the code", last)
                attempts_left, refused = left, answer
            attempt += 1
            title = problem.get("title") or f"HTTP {last.status_code}"
            error = f"{title}: {problem['detail']}" if problem.get("detail") else str(title)

    def refresh(self, call: _Call, challenge: _Challenge, known: Any) -> Steps:
        """After a wait, the challenge's state (``GET {prefix}/challenges/{id}``): the
        attempts really left, and an end to asking when the challenge is no longer pending."""
        if challenge.state is None:
            return known
        response = yield Send(call.get(challenge.state))
        yield Read(response)
        doc = problem_of(response)
        if response.status_code != 200:
            return known
        if doc.get("state") != "pending":
            raise SecondFactorError(f"the challenge is {doc.get('state')}; repeat the request "
                                    "for a new one", response,
                                    problem={"title": "Challenge no longer usable",
                                             "detail": f"state {doc.get('state')}"})
        return doc.get("attempts_left", known)

    def wait(self, call: _Call, response: httpx.Response, what: str) -> Steps:
        """429 with Retry-After: wait when it fits in ``max_wait`` (the whole request's
        budget), else raise with the gateway's title and detail."""
        seconds = retry_after(response)
        if seconds is None:
            raise SecondFactorError(what, response)
        cost = max(seconds, 1.0)  # a zero Retry-After still counts: no busy loop
        if call.waited + cost > self.max_wait:
            raise SecondFactorError(f"{what} (waiting {seconds:g} s would exceed max_wait "
                                    f"{self.max_wait:g} s)", response)
        call.waited += cost
        problem = problem_of(response)
        yield Pause(seconds=seconds, status=response.status_code,
                    title=str(problem.get("title") or f"HTTP {response.status_code}"),
                    detail=problem.get("detail"), problem=problem)
