"""docs/protocol.md: the factor interface lets a new factor be added without changing the challenge
endpoints. A toy factor unlike any built-in one goes through every endpoint; the
endpoints know factors only through gateway/factors/base.py; factor data is a sealed
document with a generic counter."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.openapi import document, operations
from gateway.factors.base import Answer, Enrolment, Started, Verification, open_data
from gateway.factors.totp import TotpFactor, seal
from gateway.keys import KeyRing, generate_data_key, generate_signing_key
from gateway.store import ChallengeRecord, FactorRecord, Store

from ..conftest import ROOT
from .conftest import MakeApp

pytestmark = pytest.mark.anyio
P = "/.stepgate"
KEY = "a-key-only-the-client-holds"


class KeyEnrol(BaseModel):
    key: str = Field(min_length=16, max_length=64)


class KeyEnrolled(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: str
    status: Literal["pending"]
    label: str
    nonce: str
    hint: str
    expires_in: int
    confirm_uri: str


class SigningKeyFactor:
    """The client signs each challenge's nonce with a key it holds and numbers its
    signatures; a signature number never goes back (WebAuthn's sign counter)."""

    delivers = False
    enrol_body = KeyEnrol
    enrolled = KeyEnrolled

    def __init__(self, name: str, store: Store) -> None:
        self.type = name
        self.store = store

    def available(self, records: list[FactorRecord], recovery_left: int) -> bool:
        return any(r.type == self.type and r.status == "active" for r in records)

    def describe(self, prefix: str) -> dict[str, Any]:
        return {"type": self.type, "answer": {"credential": {"mac": "hex", "counter": "int"}}}

    async def enrol(self, user: str, factor_id: str, body: Mapping[str, Any],
                    now: float) -> Enrolment:
        record = FactorRecord(factor_id, user, self.type, "pending", "signing key",
                              json.dumps({"key": body["key"]}), now)
        return Enrolment(reply={}, record=record, challenge=True)

    async def start(self, user: str, records: list[FactorRecord], challenge_id: str) -> Started:
        nonce = secrets.token_hex(8)
        return Started(factor_id=records[0].id, code_hash=nonce,
                       extra={"nonce": nonce, "hint": "sign the nonce"})

    async def _accept(self, record: FactorRecord, challenge: ChallengeRecord, answer: Answer,
                      now: float) -> bool:
        credential = answer.get("credential")
        if not isinstance(credential, dict) or not isinstance(credential.get("counter"), int):
            return False
        key = json.loads(record.data)["key"].encode()
        expected = hmac.new(key, str(challenge.code_hash).encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(str(credential.get("mac")), expected) and \
            await self.store.advance_counter(record.id, credential["counter"], now)

    async def confirm(self, record: FactorRecord, challenge: ChallengeRecord | None,
                      answer: Answer, now: float) -> bool:
        return challenge is not None and await self._accept(record, challenge, answer, now)

    async def verify(self, user: str, challenge: ChallengeRecord, records: list[FactorRecord],
                     answer: Answer, now: float) -> Verification:
        record = next(r for r in records if r.id == challenge.factor_id)
        return Verification(await self._accept(record, challenge, answer, now), record.id)


def signed(nonce: str, counter: int) -> dict[str, Any]:
    mac = hmac.new(KEY.encode(), nonce.encode(), hashlib.sha256).hexdigest()
    return {"credential": {"mac": mac, "counter": counter}}


async def test_a_new_kind_of_factor_needs_no_endpoint_change(make_app: MakeApp) -> None:
    rules = [{"name": "toy", "match": {"paths": ["/toy"]},
              "require": {"factors": ["pager"], "binding": "route"}}]
    async with make_app(rules=rules, factors={"totp": {}, "pager": {"deliver": {
            "command": ["false"]}}}) as (app, client):
        assert app.decider.factors is app.context.factors  # one registry for both
        app.context.factors["pager"] = SigningKeyFactor("pager", app.store)
        details = (await client.get(f"{P}/config")).json()["factor_details"]
        assert details[-1] == {"type": "pager",
                               "answer": {"credential": {"mac": "hex", "counter": "int"}}}
        short = await client.post(f"{P}/factors/pager", json={"key": "short"})
        assert short.status_code == 400 and "'key'" in short.json()["detail"]  # its own model
        enrolled = await client.post(f"{P}/factors/pager", json={"key": KEY})
        assert enrolled.status_code == 201, enrolled.text
        doc = enrolled.json()
        assert doc["hint"] == "sign the nonce" and "resend_after" not in doc
        wrong = await client.post(doc["confirm_uri"], json=signed("other", 1))
        assert wrong.status_code == 403 and wrong.json()["attempts_left"] == 4
        ok = await client.post(doc["confirm_uri"], json=signed(doc["nonce"], 1))
        assert ok.status_code == 200
        confirmed = ok.json()
        assert len(confirmed.pop("recovery_codes")) == 10  # the user's first factor
        assert confirmed == {"id": doc["id"], "type": "pager", "status": "active"}
        ticket = (await client.get("/toy")).json()["ticket"]
        ch = (await client.post(f"{P}/challenges", json={"ticket": ticket})).json()
        assert ch["factor"] == "pager" and ch["nonce"] and "resend_after" not in ch
        replayed = await client.post(ch["verify_uri"], json=signed(ch["nonce"], 1))
        assert replayed.status_code == 403  # the counter never goes back
        token = await client.post(ch["verify_uri"], json=signed(ch["nonce"], 2))
        assert token.status_code == 200, token.text
        r = await client.get("/toy", headers={"X-Stepgate-Token": token.json()["token"]})
        assert r.status_code == 200
        listed, _codes = (await client.get(f"{P}/factors")).json()["factors"]
        assert listed["type"] == "pager" and listed["last_used_at"] is not None
        # the document describes its enrolment from its own models
        api = document(app.context, operations(app.context))
        body = api["paths"][f"{P}/factors/pager"]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/KeyEnrol"}


def test_the_endpoints_know_factors_only_through_their_interface() -> None:
    for path in sorted((ROOT / "gateway" / "api").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway.factors"):
                assert node.module == "gateway.factors.base", (path.name, node.module)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                assert "Factor" not in ast.unparse(node), (path.name, ast.unparse(node))


def test_totp_data_is_a_sealed_document_for_its_user_and_factor() -> None:
    ring = KeyRing([generate_signing_key()], [generate_data_key()])
    totp = TotpFactor(store=None, keys=ring)  # type: ignore[arg-type]
    record = totp.record("alice", "f1", "JBSWY3DPEHPK3PXP", label="phone", now=5.0)
    assert (record.type, record.status, record.counter) == ("totp", "active", -1)
    assert "JBSWY3DPEHPK3PXP" not in record.data and set(json.loads(record.data)) == {"secret"}
    assert totp.secret_of(record) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(ValueError):  # sealed for alice's f1 only
        open_data(ring, record.data, "secret", "totp:mallory:f1")
    positional = FactorRecord("f1", "alice", "totp", "active", "x",
                              seal(ring, "alice", "f1", "JBSWY3DPEHPK3PXP"), 1.0)
    assert totp.secret_of(positional) == "JBSWY3DPEHPK3PXP"
