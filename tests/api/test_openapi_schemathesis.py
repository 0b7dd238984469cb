"""The OpenAPI document against a real gateway process: schemathesis generates requests
for every operation from the document (valid ones, and invalid ones the gateway must
refuse with a documented 4xx) and checks that no answer is a 5xx and that every answer
is one the document declares: status code, content type, headers and body schema."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ..conftest import HERE, USERS, GatewayProcess, basic
from ..totp_ref import Device

pytestmark = pytest.mark.e2e
ADMIN_KEY = "x" * 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


P = "/.stepgate"
RULES = {"rules": [
    {"name": "pay", "match": {"methods": ["POST"], "paths": ["/pay"]},
     "require": {"factors": ["totp", "recovery"], "binding": "request"}},
    {"name": "both", "match": {"paths": ["/both"]},
     "require": {"factors": {"all_of": ["sms", "recovery"]}, "binding": "route"}},
    {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"},
]}


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outbox") / "sent.jsonl"


@pytest.fixture(scope="module")
def contract_gateway(make_gateway: Any, outbox: Path) -> GatewayProcess:
    return make_gateway(
        rules=RULES, env={"STEPGATE_ADMIN_KEY": ADMIN_KEY},
        admin={"key_env": "STEPGATE_ADMIN_KEY"},
        factors={"totp": {"issuer": "Test Bank"},
                 "sms": {"deliver": {"command": [sys.executable, str(HERE / "send_code.py"),
                                                 str(outbox)]}, "address": "e164"}})


def credentials(path: str, user: str) -> dict[str, str]:
    # The admin API takes the admin key; everything else a user's Basic credentials.
    return {"Authorization": f"Bearer {ADMIN_KEY}"} if "/admin/" in path else basic(user)


def test_every_answer_is_documented(contract_gateway: GatewayProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{contract_gateway.url}/.stepgate/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    # One user per operation: what one operation changes (recovery codes make later
    # changes need a manage token) does not hide another's success answers.
    for n, operation in enumerate(operations):
        user = USERS[1 + n % (len(USERS) - 1)]
        for mode in MODES:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=6, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=credentials(case.path, user), checks=CHECKS,
                                       timeout=20)
            try:
                run()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
                continue  # nothing in the operation can be made invalid (GET /config)
            except Exception as exc:  # every operation is tried; all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert failures == [], "\n\n".join(failures)


class Conformance:
    """Real answers, checked against the operation the document declares for them."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.schema = schemathesis.openapi.from_url(f"{gw.url}{P}/openapi.json")
        self.client = httpx.Client(base_url=gw.url, headers=basic(USERS[0]), timeout=20)
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, template: str, path: str | None = None, *,
                 status: int, **kw: Any) -> httpx.Response:
        r = self.client.request(method, P + (path or template), **kw)
        assert r.status_code == status, r.text
        operation = self.schema[P + template][method]
        assert str(status) in operation.definition.raw["responses"], (method, template, status)
        operation.validate_response(r)
        self.seen.add((method, template, status))
        return r

    def manage_token(self, method: str, template: str, path: str, recovery: str,
                     **kw: Any) -> str:
        r = self(method, template, path, status=401, **kw)
        assert r.json()["rule"] == "stepgate:manage"
        ch = self("POST", "/challenges", status=201,
                  json={"ticket": r.json()["ticket"], "factor": "recovery"})
        return str(self("POST", "/challenges/{challenge_id}/verify", ch.json()["verify_uri"][len(P):],
                        status=200, json={"code": recovery}).json()["token"])


def sms_code(outbox: Path, count: int) -> str:
    messages = outbox.read_text().splitlines()
    assert len(messages) == count
    found = re.search(r"code is (\d{6})", messages[-1])
    assert found is not None
    return found.group(1)


def test_success_answers_match_the_document(contract_gateway: GatewayProcess,
                                            outbox: Path) -> None:
    api = Conformance(contract_gateway)
    api("GET", "/config", status=200)
    totp = api("POST", "/factors/totp", status=201, json={"label": "phone"}).json()
    device = Device(totp["secret"])
    api("POST", "/factors/{factor_id}/confirm", f"/factors/{totp['id']}/confirm", status=200,
        json={"code": device.code()})
    # recovery codes need a manage token now, answered with TOTP
    denied = api("POST", "/recovery-codes", status=401, json={})
    ch = api("POST", "/challenges", status=201, json={"ticket": denied.json()["ticket"]})
    assert ch.headers["location"] == f"{P}/challenges/{ch.json()['challenge_id']}"
    api("GET", "/challenges/{challenge_id}", f"/challenges/{ch.json()['challenge_id']}",
        status=200)
    token = api("POST", "/challenges/{challenge_id}/verify", ch.json()["verify_uri"][len(P):],
                status=200, json={"code": device.code()}).json()["token"]
    codes = api("POST", "/recovery-codes", status=201, json={},
                headers={"X-Stepgate-Token": token}).json()["codes"]
    api("GET", "/factors", status=200)
    # a delivered-code channel, enrolled through the generic enrol operation
    token = api.manage_token("POST", "/factors/{factor}", "/factors/sms", codes[0],
                             json={"address": "+33612345678"})
    sms = api("POST", "/factors/{factor}", "/factors/sms", status=201,
              json={"address": "+33612345678"}, headers={"X-Stepgate-Token": token}).json()
    api("POST", "/factors/{factor_id}/confirm", f"/factors/{sms['id']}/confirm", status=200,
        json={"code": sms_code(outbox, 1)})
    # an all_of rule: the first factor answers with what remains, the second with a token
    ticket = api.client.get("/both").json()["ticket"]
    first = api("POST", "/challenges", status=201, json={"ticket": ticket, "factor": "sms"})
    api("POST", "/challenges/{challenge_id}/verify", first.json()["verify_uri"][len(P):],
        status=200, json={"code": sms_code(outbox, 2)})
    second = api("POST", "/challenges", status=201, json={"ticket": ticket})
    api("POST", "/challenges/{challenge_id}/verify", second.json()["verify_uri"][len(P):],
        status=200, json={"code": codes[1]})
    listed = api("GET", "/factors", status=200).json()["factors"]
    assert [f["type"] for f in listed] == ["totp", "sms", "recovery"]
    token = api.manage_token("DELETE", "/factors/{factor}", f"/factors/{sms['id']}", codes[2])
    api("DELETE", "/factors/{factor}", f"/factors/{sms['id']}", status=204,
        headers={"X-Stepgate-Token": token})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    user = USERS[0]
    api("GET", "/admin/users/{user}/factors", f"/admin/users/{user}/factors", status=200,
        headers=admin)
    api("POST", "/admin/users/{user}/unlock", f"/admin/users/{user}/unlock", status=200,
        headers=admin, json={})
    api("GET", "/admin/audit", status=200, headers=admin, params={"user": user, "limit": 5})
    api("DELETE", "/admin/users/{user}/factors", f"/admin/users/{user}/factors", status=200,
        headers=admin)
    successes = {(m, t) for m, t, s in api.seen if s < 300}
    assert len(successes) == 14  # every operation but openapi.json itself answered 2xx
