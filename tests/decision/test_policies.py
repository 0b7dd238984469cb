"""Rule matching: first match wins, compiled patterns, conditions, explain()."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.decision.policies import NeedBody, PolicyEngine, RequestView, load_policy
from gateway.problems import Problem

RULES = [
    {"name": "public", "match": {"paths": ["/public/**"]}, "action": "allow"},
    {"name": "v2-only", "match": {"paths": ["/api/**"], "hosts": ["v2.example.com", "*.internal"]},
     "action": "allow"},
    {"name": "debug", "match": {"paths": ["/debug"], "query": {"verbose": "1"}}, "action": "deny"},
    {"name": "tenant", "match": {"paths": ["/t"], "headers": {"X-Tenant": {"in": ["a", "b"]}}},
     "action": "allow"},
    {"name": "big", "match": {"methods": ["POST"], "paths": ["/pay"],
                              "json": {"$.amount": {"gt": 1000}}},
     "require": {"factors": ["totp"]}},
    {"name": "item-big", "match": {"methods": ["POST"], "paths": ["/cart"],
                                   "json": {"$.items[0].qty": {"gte": 10}}},
     "action": "deny"},
    {"name": "allow-when-cheap", "match": {"methods": ["POST"], "paths": ["/cheap"],
                                           "json": {"$.amount": {"lt": 10}}},
     "action": "allow"},
    {"name": "account", "match": {"methods": ["GET", "PATCH"], "paths": ["/accounts/{id}"]},
     "require": {"factors": ["totp"], "binding": "session", "scope": "acct"}},
    {"name": "root", "match": {"paths": ["/"]}, "action": "allow"},
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    d = tmp_path_factory.mktemp("pol")
    (d / "r.yaml").write_text(yaml.safe_dump({"rules": RULES}))
    return load_policy(d, default_action="deny", known_factors={"totp", "recovery"})


def view(method: str, path: str, host: str = "", query: bytes = b"",
         headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None) -> RequestView:
    return RequestView(method, path, host, query, headers or [], body)


MATCHES = [
    (view("GET", "/public"), "public"),
    (view("GET", "/public/a/b/c"), "public"),
    (view("GET", "/publicity"), None),
    (view("GET", "/api/x", host="v2.example.com"), "v2-only"),
    (view("GET", "/api/x", host="db.internal"), "v2-only"),
    (view("GET", "/api/x", host="internal"), None),
    (view("GET", "/api/x", host="v1.example.com"), None),
    (view("GET", "/debug", query=b"verbose=1"), "debug"),
    (view("GET", "/debug", query=b"verbose=0"), None),
    (view("GET", "/debug/", query=b"a=1&verbose=1"), "debug"),
    (view("GET", "/t", headers=[(b"x-tenant", b"b")]), "tenant"),
    (view("GET", "/t", headers=[(b"x-tenant", b"c")]), None),
    (view("POST", "/pay", body=b'{"amount": 5000}'), "big"),
    (view("POST", "/pay", body=b'{"amount": "5000"}'), "big"),
    (view("POST", "/pay", body=b'{"amount": [1]}'), "big"),  # unknowable: protective rule matches
    (view("POST", "/pay", body=b'{"amount": 50}'), None),
    (view("POST", "/pay", body=b'{}'), None),
    (view("POST", "/cart", body=b'{"items": [{"qty": 12}]}'), "item-big"),
    (view("POST", "/cart", body=b'{"items": []}'), None),
    (view("POST", "/cheap", body=b'{"amount": 5}'), "allow-when-cheap"),
    (view("POST", "/cheap", body=b'{"amount": "free"}'), None),  # unknowable: allow rule does not
    (view("GET", "/accounts/42"), "account"),
    (view("GET", "/accounts/42/"), "account"),  # a trailing slash never steps around a rule
    (view("DELETE", "/accounts/42"), None),
    (view("GET", "/accounts/42/x"), None),
    (view("GET", "/"), "root"),
]


@pytest.mark.parametrize("req,expected", MATCHES)
def test_first_match(policy: PolicyEngine, req: RequestView, expected: str | None) -> None:
    try:
        rule = policy.match(req)
    except NeedBody:
        pytest.fail("body was given")
    assert (rule.name if rule else None) == expected


def test_body_is_requested_only_when_a_json_rule_is_reached(policy: PolicyEngine) -> None:
    assert policy.match(view("GET", "/public/x")) is not None  # no body needed
    with pytest.raises(NeedBody):
        policy.match(view("POST", "/pay"))


@pytest.mark.parametrize("req", [
    view("GET", "/debug", query=b"verbose=0&verbose=1"),
    view("GET", "/t", headers=[(b"x-tenant", b"a"), (b"x-tenant", b"c")]),
    view("POST", "/pay", body=b'{"amount": 1, "amount": 5000}'),
    view("POST", "/pay", body=b'not json'),
    view("POST", "/pay", body=b"[" * 100000 + b"]" * 100000),
])
def test_ambiguous_or_unreadable_input_is_rejected(policy: PolicyEngine, req: RequestView) -> None:
    with pytest.raises(Problem) as err:
        policy.match(req)
    assert err.value.status == 400


def test_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"rules": [
        {"name": "admin", "match": {"paths": ["/Admin/{x}"]}, "action": "deny"}]}))
    ci = load_policy(tmp_path, default_action="allow", known_factors=set(), case_insensitive=True)
    cs = load_policy(tmp_path, default_action="allow", known_factors=set())
    assert ci.match(view("GET", "/ADMIN/1")) is not None
    assert cs.match(view("GET", "/ADMIN/1")) is None
    assert cs.match(view("GET", "/Admin/1")) is not None


def test_explain_says_why_each_earlier_rule_missed(policy: PolicyEngine) -> None:
    rule, misses = policy.explain(view("PATCH", "/accounts/7"))
    assert rule is not None and rule.name == "account"
    reasons = {r.name: why[0] for r, why in misses}
    assert reasons["public"] == "path /accounts/7 matches none of /public/**"
    assert reasons["big"] == "method PATCH is not one of POST"
    assert len(misses) == 7
    rule, misses = policy.explain(view("POST", "/pay"))
    assert rule is None
    assert dict((r.name, w[0]) for r, w in misses)["big"] == \
        "its JSON conditions need a request body (pass --json)"
