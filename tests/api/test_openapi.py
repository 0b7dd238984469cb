"""The OpenAPI document's shape: it covers every route, every problem type and every
status the endpoints share, follows the configuration, and is valid OpenAPI 3.1."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31
from starlette.routing import Match

from gateway.problems import CATALOGUE, PROBLEM_TYPE_PREFIX

from .conftest import MakeApp

pytestmark = pytest.mark.anyio
METHODS = {"get", "post", "put", "patch", "delete"}


async def _doc(make_app: MakeApp, **config: Any) -> tuple[dict[str, Any], Any]:
    async with make_app(**config) as (app, client):
        r = await client.get(f"{app.settings.prefix}/openapi.json", auth=None)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        return r.json(), app


async def test_every_route_is_documented_and_every_operation_is_routed(make_app: MakeApp) -> None:
    doc, app = await _doc(make_app)
    prefix = app.settings.prefix
    routes = app.endpoints.routes
    for route in routes:
        for method in route.methods - {"HEAD"}:
            assert method.lower() in doc["paths"][prefix + route.path], (method, route.path)
    for path, item in doc["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "some-id_1", path[len(prefix):])
        for method in set(item) & METHODS:
            scope = {"type": "http", "path": concrete, "method": method.upper(), "root_path": ""}
            assert any(route.matches(scope)[0] is Match.FULL for route in routes), (method, path)
            assert item[method]["operationId"]
    ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items()
           if m in METHODS]
    assert len(ids) == len(set(ids))


async def test_every_problem_type_is_listed_with_its_status(make_app: MakeApp) -> None:
    doc, _ = await _doc(make_app)
    listed = {p["name"]: (p["status"], p["title"]) for p in doc["x-problem-types"]}
    assert listed == CATALOGUE
    type_enum = doc["components"]["schemas"]["ProblemDetails"]["properties"]["type"]["enum"]
    assert type_enum == [PROBLEM_TYPE_PREFIX + n for n in CATALOGUE]
    for item in doc["paths"].values():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/problem+json"]["schema"]
                for urn in schema["properties"]["type"]["enum"]:
                    name = urn.removeprefix(PROBLEM_TYPE_PREFIX)
                    assert CATALOGUE[name][0] == int(status), (method, name, status)


async def test_shared_refusals_are_on_every_operation(make_app: MakeApp) -> None:
    doc, _ = await _doc(make_app)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            answers = op["responses"]
            assert {"400", "408", "500", "503"} <= set(answers), (method, path)
            if method == "post":
                assert {"413", "415"} <= set(answers), path
                assert "requestBody" in op, path
            if method != "get" or "/challenges/" in path:
                assert "401" in answers or "/openapi.json" in path, (method, path)
            if "/admin/" in path:
                assert op["security"] == [{"adminKey": []}] and "404" in answers


@pytest.mark.parametrize("key,expected", [
    ("/challenges", {"post": ["201", "400", "401", "403", "408", "413", "415", "429", "500",
                              "502", "503"]}),
    ("/challenges/{challenge_id}/verify", {"post": ["200", "400", "401", "403", "404", "408",
                                                    "410", "413", "415", "429", "500", "503"]}),
    ("/factors/{factor_id}/confirm", {"post": ["200", "400", "401", "403", "404", "408", "409",
                                               "410", "413", "415", "429", "500", "503"]}),
    ("/factors/{factor}", {"post": ["201", "400", "401", "403", "404", "408", "409", "413",
                                    "415", "429", "500", "502", "503"],
                           "delete": ["204", "400", "401", "403", "404", "408", "409", "413",
                                      "500", "503"]}),
])
async def test_statuses_per_operation(make_app: MakeApp, key: str,
                                      expected: dict[str, list[str]]) -> None:
    doc, _ = await _doc(make_app)
    item = doc["paths"]["/.stepgate" + key]
    assert {m: sorted(op["responses"]) for m, op in item.items()} == expected


async def test_answers_and_bodies_come_from_the_models(make_app: MakeApp) -> None:
    doc, _ = await _doc(make_app)
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    create = paths["/.stepgate/challenges"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChallengeCreate"}
    assert schemas["ChallengeCreate"]["required"] == ["ticket"]
    assert create["responses"]["201"]["headers"]["Location"]["required"] is True
    verify = paths["/.stepgate/challenges/{challenge_id}/verify"]["post"]
    answer = schemas[verify["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                     .rsplit("/", 1)[1]]
    assert "code" in answer["properties"] and answer.get("additionalProperties", True) is not False
    assert verify["responses"]["200"]["content"]["application/json"]["schema"] == {"anyOf": [
        {"$ref": "#/components/schemas/TokenIssued"},
        {"$ref": "#/components/schemas/FactorsRemaining"}]}
    totp = paths["/.stepgate/factors/totp"]["post"]
    assert totp["requestBody"]["required"] is False
    assert set(schemas["TotpEnrolled"]["required"]) >= {"secret", "otpauth_uri", "qr_svg"}


async def test_the_document_is_valid_openapi_3_1(make_app: MakeApp) -> None:
    doc, _ = await _doc(make_app, factors={"totp": {}, "sms": {"deliver": {"command": ["true"]}}})
    assert doc["openapi"] == "3.1.0"
    errors = [e.message for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(doc)]
    assert errors == []
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # each configured factor gets its own enrolment, with its own body
    sms = doc["paths"]["/.stepgate/factors/sms"]["post"]
    assert sms["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AddressEnrol"}


async def test_the_document_follows_the_configuration(make_app: MakeApp) -> None:
    doc, _ = await _doc(make_app, prefix="/_2fa", token_header="X-Second-Factor")
    assert doc["paths"] and all(p.startswith("/_2fa/") for p in doc["paths"])
    schemes = doc["components"]["securitySchemes"]
    assert schemes["manageToken"] == {
        "type": "apiKey", "in": "header", "name": "X-Second-Factor",
        "description": schemes["manageToken"]["description"]}
    assert schemes["identity"]["type"] == "http" and schemes["identity"]["scheme"] == "basic"
    assert schemes["adminKey"]["scheme"] == "bearer"
