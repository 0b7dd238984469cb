"""An httpx.Auth that follows Stepgate's 401 handshake: challenge, verify, retry.

    auth = StepgateAuth(lambda factor, info: input(f"{factor} code: "), basic=("alice", "pw"))
    httpx.post("http://gw/accounts/1/transactions", json={...}, auth=auth)

The same object works with ``httpx.Client`` and ``httpx.AsyncClient``; the code
callback is called synchronously (it may prompt, read a TOTP app, or poll a mailbox).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Generator
from typing import Any

import httpx

CodeCallback = Callable[[str, dict[str, Any]], str]


class SecondFactorError(Exception):
    """The gateway refused a step of the handshake; ``response`` says why (problem+json)."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {}


def _challenge(response: httpx.Response) -> dict[str, Any] | None:
    try:
        doc = response.json()
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("type") == "urn:stepgate:problem:second-factor-required":
        return doc
    return None


class StepgateAuth(httpx.Auth):
    requires_request_body = True
    requires_response_body = True

    def __init__(self, code: CodeCallback, *, basic: tuple[str, str] | None = None,
                 factor: str | None = None, max_rounds: int = 2) -> None:
        self.code = code
        self.factor = factor
        self.max_rounds = max_rounds
        self.authorization: str | None = None
        if basic is not None:
            raw = f"{basic[0]}:{basic[1]}".encode()
            self.authorization = "Basic " + base64.b64encode(raw).decode()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.authorization and "authorization" not in request.headers:
            request.headers["Authorization"] = self.authorization
        response = yield request
        for _ in range(self.max_rounds):
            if response.status_code != 401:
                return
            challenge = _challenge(response)
            if challenge is None:
                return
            token, header = yield from self._handshake(request, challenge)
            request.headers[header] = token
            response = yield request

    def _handshake(self, request: httpx.Request, challenge: dict[str, Any]
                   ) -> Generator[httpx.Request, httpx.Response, tuple[str, str]]:
        creds = {}
        if "authorization" in request.headers:
            creds["Authorization"] = request.headers["authorization"]
        create_url = request.url.join(challenge["challenge_uri"])
        factor = self.factor if self.factor in challenge.get("factors", []) else None
        for _ in range(len(challenge.get("factors", [])) + 1):
            body: dict[str, Any] = {"ticket": challenge["ticket"]}
            if factor:
                body["factor"] = factor
            created = yield httpx.Request("POST", create_url, json=body, headers=creds)
            if created.status_code != 201:
                raise SecondFactorError("the gateway refused to start a challenge", created)
            info = created.json()
            code = self.code(info["factor"], info)
            verified = yield httpx.Request("POST", request.url.join(info["verify_uri"]),
                                           json={"code": code}, headers=creds)
            if verified.status_code != 200:
                raise SecondFactorError("the gateway did not accept the code", verified)
            result = verified.json()
            if "token" in result:
                return result["token"], result["token_header"]
            remaining = result.get("remaining") or []
            factor = remaining[0] if remaining else None
        raise SecondFactorError("the handshake did not produce a token", verified)
