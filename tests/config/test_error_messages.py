"""What a policy author reads when a file is wrong: every problem at the line of the key or
item at fault, the item of a list that is wrong and why, the key a misspelt one was meant
to be, names and YAML keys written twice, one message per mistake, and YAML syntax errors
in plain words with line and column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config.load import check_settings

from ..conftest import DATA, SIGNING

CONFIG = """\
upstream:
  url: http://127.0.0.1:9000
identity:
  basic: {verify: backend}
"""
POLICY = """\
rules:
  - name: open
    match: {paths: [/a]}
    action: allow
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative names, so messages read as they do for `stepgate check --config c.yaml`.
    monkeypatch.chdir(tmp_path)


def problems(config: str = CONFIG, policy: str | None = POLICY,
             files: dict[str, str] | None = None) -> list[str]:
    folder = Path("policies")
    folder.mkdir(exist_ok=True)
    if policy is not None:
        (folder / "rules.yaml").write_text(textwrap.dedent(policy))
    for name, text in (files or {}).items():
        (folder / name).write_text(textwrap.dedent(text))
    Path("c.yaml").write_text(textwrap.dedent(config))
    return list(check_settings("c.yaml").errors)


# ---------------------------------------------------------------------------- line numbers

def test_config_problems_carry_the_line_of_their_key() -> None:
    assert problems("""\
        upstream:
          url: http://127.0.0.1:9000
          read_timeout: soon
        workers: 0
        identity:
          basic:
            upstream_probe: {cache_ttl: 1m}
        factors:
          sms:
            deliver:
              command: [./send]
            digits: 4
        """) == [
        "c.yaml:3: upstream.read_timeout: expected a duration like '30s', '2m' or '1h', "
        "found 'soon'",
        "c.yaml:4: workers: expected an integer >= 1 and <= 64, found the number 0",
        # a key that is missing is reported where its mapping starts
        "c.yaml:7: identity.basic.upstream_probe.path: expected a path starting with '/', "
        "found nothing",
        "c.yaml:12: factors.sms.digits: expected an integer >= 6 and <= 8, found the number 4",
    ]


def test_policy_problems_carry_the_line_of_their_key_and_rule() -> None:
    assert problems(policy="""\
        rules:
          - name: open
            match: {paths: [/public/**]}
            action: allow
          - name: pay
            match:
              methods: [POST]
              paths: [/pay]
            require: {factors: [totp],
                      binding: sesion}
          - name: nomatch
            action: allow
        """) == [
        "policies/rules.yaml:10: rule #2 ('pay'): require.binding: expected one of 'request', "
        "'route', 'session', found 'sesion', did you mean 'session'?",
        "policies/rules.yaml:11: rule #3 ('nomatch'): match: expected a mapping, found nothing",
    ]


def test_problems_of_the_whole_file_come_first_then_by_line_and_file() -> None:
    assert problems("""\
        workers: 0
        upstream:
          url: ftp://x
        identity: {basic: {verify: backend}}
        policies: policies/
        """, policy=None, files={
        "10-a.yaml": """\
            rules:
              - name: a
                match: {paths: [/a]}
                action: maybe
            """,
        "20-b.yaml": """\
            rules:
              - {name: b, match: {paths: [b]}, action: allow}
            """}) == [
        "c.yaml:1: workers: expected an integer >= 1 and <= 64, found the number 0",
        "c.yaml:3: upstream.url: expected an http:// or https:// URL without query, found 'ftp://x'",
        "policies/10-a.yaml:4: rule #1 ('a'): action: expected one of 'allow', 'deny', "
        "'require', found 'maybe'",
        "policies/20-b.yaml:2: rule #1 ('b'): match.paths: 'b' does not start with '/'",
    ]


def test_the_policies_path_is_reported_at_its_key() -> None:
    assert problems(CONFIG + "policies: nowhere/\n") == [
        "c.yaml:5: policies: expected a YAML file or a folder of them, found no such file or "
        "folder"]


def test_a_missing_identity_source_is_reported_at_its_key() -> None:
    assert problems("""\
        upstream:
          url: http://127.0.0.1:9000
        identity:
        """, policy="""\
        rules:
          - {name: r, match: {paths: [/a]}, require: {factors: [totp]}}
        """) == ["c.yaml:3: identity: expected 'basic' or 'header' because rules require a "
                 "second factor, found no identity source"]


def test_stepgate_check_prints_the_located_problems(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STEPGATE_KEYS", SIGNING)
    monkeypatch.setenv("STEPGATE_DATA_KEYS", DATA)
    problems(CONFIG.replace("  url:", "  conect_timeout: 2s\n  url:"), policy="""\
        rules:
          - name: pay
            match: {methods: [post], paths: [/pay]}
            action: allow
        """)
    assert main(["check", "--config", "c.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "stepgate: 2 problem(s) in the configuration:",
        "  - c.yaml:2: upstream: unknown key 'conect_timeout', did you mean 'connect_timeout'?",
        "  - policies/rules.yaml:3: rule #1 ('pay'): match.methods: 'post' is not upper case "
        "(write 'POST')",
    ]


# ---------------------------------------------------------------------------- list items

def test_the_wrong_items_of_a_list_are_named_each_at_its_line() -> None:
    assert problems(policy="""\
        rules:
          - name: a
            match:
              methods:
                - GET
                - post
                - 5
              paths:
                - /a
                - /a/**/b
            action: allow
        """) == [
        "policies/rules.yaml:6: rule #1 ('a'): match.methods: 'post' is not upper case "
        "(write 'POST')",
        "policies/rules.yaml:7: rule #1 ('a'): match.methods: the number 5 is not a string",
        "policies/rules.yaml:10: rule #1 ('a'): match.paths: '/a/**/b' has '**' before its end: "
        "'**' may only end a pattern",
    ]


@pytest.mark.parametrize("pattern,why", [
    ("a/b", "does not start with '/'"),
    ("/a/**/b", "has '**' before its end: '**' may only end a pattern"),
    ("/a/", "ends with '/' (leave it out: a trailing slash is matched anyway)"),
    ("/a//b", "has an empty segment ('//')"),
    ("/a/../b", "has a '..' segment, which no canonical request path has"),
    ("/a/*", "has '*' inside a segment: use {name} for one segment, or '**' last for any rest"),
    ("/a/{id}.json", "has a '{' or '}' that is not a whole segment like {name}"),
    ("/a/{id}/{id}", "names {id} twice"),
    ("/a?b=1", "has '?': patterns match the path, never the query (use match.query)"),
    ("/%61dmin", "has '%': patterns match the percent-decoded path, so write the character "
                 "itself"),
])
def test_a_wrong_path_pattern_says_why(pattern: str, why: str) -> None:
    assert problems(policy=f"""\
        rules:
          - name: a
            match: {{paths: ["/ok", "{pattern}"]}}
            action: allow
        """) == [f"policies/rules.yaml:3: rule #1 ('a'): match.paths: {pattern!r} {why}"]


def test_a_single_string_is_a_list_of_one() -> None:
    assert problems(policy="""\
        rules:
          - name: a
            match: {methods: get}
            action: allow
        """) == ["policies/rules.yaml:3: rule #1 ('a'): match.methods: 'get' is not upper case "
                 "(write 'GET')"]


def test_required_factors_are_named_one_by_one() -> None:
    assert problems(policy="""\
        rules:
          - name: a
            match: {paths: [/a]}
            require:
              factors:
                - totp
                - totpp
                - totp
                - 7
        """) == [
        "policies/rules.yaml:7: rule #1 ('a'): require.factors: expected factors the "
        "configuration enables (recovery, totp), found 'totpp', did you mean 'totp'?",
        "policies/rules.yaml:8: rule #1 ('a'): require.factors: 'totp' is listed twice",
        "policies/rules.yaml:9: rule #1 ('a'): require.factors: the number 7 is not a factor name",
    ]


def test_config_lists_and_mappings_name_their_wrong_items() -> None:
    assert problems("""\
        upstream:
          url: http://127.0.0.1:9000
        identity:
          basic: {verify: backend}
        trusted_proxies:
          - 10.0.0.0/8
          - 10.0.0.0/33
        factors:
          pager:
            deliver:
              webhook:
                url: http://hooks.local/p
                headers: {X-Token: abc, X-Retries: 3}
        """) == [
        "c.yaml:7: trusted_proxies: '10.0.0.0/33' is not a CIDR like '10.0.0.0/8'",
        "c.yaml:13: factors.pager.deliver.webhook.headers: 'X-Retries': expected a string, "
        "found the number 3",
    ]


# ---------------------------------------------------------------------------- did you mean

def test_an_unknown_key_names_the_key_it_probably_misspells() -> None:
    assert problems("""\
        upstream:
          url: http://127.0.0.1:9000
          conect_timeout: 2s
        identity: {basic: {verify: backend}}
        colour: blue
        """, policy="""\
        rules:
          - name: a
            match: {path: /a, methods: [GET]}
            actoin: allow
        """) == [
        "c.yaml:3: upstream: unknown key 'conect_timeout', did you mean 'connect_timeout'?",
        # nothing close: every key it could have been
        "c.yaml:5: unknown key 'colour'; expected one of 'access_log', 'admin', 'audit', 'challenge_ttl', "
        "'default_action', 'enrollment', 'evidence_headers', 'factors', 'forward_auth', "
        "'identity', 'keys', "
        "'limits', 'listen', 'manage', 'max_body', 'metrics', 'notify', 'paths', 'policies', 'prefix', "
        "'realm', 'redis', 'redis_prefix', 'shutdown_grace', 'store', 'store_timeout', 'throttle', 'ticket_ttl', 'token_header', "
        "'trusted_proxies', 'upstream', 'workers'",
        "policies/rules.yaml:3: rule #1 ('a'): match: unknown key 'path', did you mean 'paths'?",
        "policies/rules.yaml:4: rule #1 ('a'): unknown key 'actoin', did you mean 'action'?",
    ]


def test_a_misspelt_choice_names_the_choice() -> None:
    assert problems(CONFIG + "default_action: alow\n") == [
        "c.yaml:5: default_action: expected one of 'allow', 'deny', found 'alow', did you "
        "mean 'allow'?"]


# ---------------------------------------------------------------------------- written twice

def test_a_duplicate_rule_name_is_reported_with_the_other_problems_of_either_rule() -> None:
    assert problems(policy="""\
        rules:
          - name: pay
            match: {paths: [pay]}
            action: allow
          - name: pay
            match: {paths: [/pay]}
            action: permit
        """) == [
        "policies/rules.yaml:3: rule #1 ('pay'): match.paths: 'pay' does not start with '/'",
        "policies/rules.yaml:5: rule #2 ('pay'): name: expected a unique rule name, found "
        "'pay', already the name of rule #1 in policies/rules.yaml:2",
        "policies/rules.yaml:7: rule #2 ('pay'): action: expected one of 'allow', 'deny', "
        "'require', found 'permit'",
    ]


def test_a_duplicate_rule_name_across_files_names_the_first() -> None:
    assert problems(policy=None, files={
        "10-a.yaml": POLICY,
        "20-b.yaml": """\
            rules:
              - name: open
                match: {paths: [/b]}
                action: deny
            """}) == [
        "policies/20-b.yaml:2: rule #1 ('open'): name: expected a unique rule name, found "
        "'open', already the name of rule #1 in policies/10-a.yaml:2"]


def test_a_key_written_twice_is_an_error_not_last_wins() -> None:
    assert problems("""\
        upstream:
          url: http://127.0.0.1:9000
          url: http://127.0.0.1:9001
        identity: {basic: {verify: backend}}
        workers: 2
        workers: 0
        """, policy="""\
        rules:
          - name: a
            match: {paths: [/a], paths: [/b]}
            action: allow
            action: deny
        """) == [
        "c.yaml:3: upstream: expected each key once, found 'url' again (first on line 2)",
        "c.yaml:6: expected each key once, found 'workers' again (first on line 5)",
        # the value written last is still checked, and its problems reported with it
        "c.yaml:6: workers: expected an integer >= 1 and <= 64, found the number 0",
        "policies/rules.yaml:3: rule #1 ('a'): match: expected each key once, found 'paths' "
        "again (first on line 3)",
        "policies/rules.yaml:5: rule #1 ('a'): expected each key once, found 'action' again "
        "(first on line 4)",
    ]


def test_keys_a_merge_brings_in_may_be_overridden() -> None:
    assert problems(policy="""\
        rules:
          - &base
            name: a
            match: {paths: [/a]}
            action: allow
          - <<: *base
            name: b
        """) == []


# ---------------------------------------------------------------------------- one per mistake

NO_CASCADE = [
    ("a misspelt required key is not also missing",
     "upstream: {ulr: http://x}\nidentity: {basic: {verify: backend}}\n", POLICY,
     ["c.yaml:1: upstream: unknown key 'ulr', did you mean 'url'?"]),
    ("a misspelt required section is not also missing",
     "upstrem: {url: http://x}\nidentity: {basic: {verify: backend}}\n", POLICY,
     ["c.yaml:1: unknown key 'upstrem', did you mean 'upstream'?"]),
    ("a misspelt one-of key is not also none of them",
     "upstream: {url: http://x}\nidentity: {basic: {htpaswd: users}}\n", POLICY,
     ["c.yaml:2: identity.basic: unknown key 'htpaswd', did you mean 'htpasswd'?"]),
    ("a misspelt require is not also missing", CONFIG,
     "rules:\n  - {name: a, match: {paths: [/a]}, requre: {factors: [totp]}}\n",
     ["policies/rules.yaml:2: rule #1 ('a'): unknown key 'requre', did you mean 'require'?"]),
    ("misspelt factors are not also missing", CONFIG,
     "rules:\n  - {name: a, match: {paths: [/a]}, require: {factor: [totp]}}\n",
     ["policies/rules.yaml:2: rule #1 ('a'): require: unknown key 'factor', did you mean "
      "'factors'?"]),
    ("a broken channel is not also unknown to the rules and notify",
     CONFIG + "factors:\n  sms:\n    delivr: {command: [./send]}\nnotify: {channel: sms}\n",
     "rules:\n  - {name: a, match: {paths: [/a]}, require: {factors: [sms]}}\n",
     ["c.yaml:7: factors.sms: unknown key 'delivr', did you mean 'deliver'?"]),
    ("a wrong binding says nothing about scope and uses", CONFIG,
     "rules:\n  - name: a\n    match: {paths: [/a]}\n"
     "    require: {factors: [totp], binding: sesion, scope: s, uses: 3}\n",
     ["policies/rules.yaml:4: rule #1 ('a'): require.binding: expected one of 'request', "
      "'route', 'session', found 'sesion', did you mean 'session'?"]),
    ("a section that is not a mapping lacks none of its keys",
     "upstream: http://x\nidentity: {basic: {verify: backend}}\n", POLICY,
     ["c.yaml:1: upstream: expected a mapping, found 'http://x'"]),
    ("a match that is not a mapping lacks nothing", CONFIG,
     "rules:\n  - {name: a, match: /a, action: allow}\n",
     ["policies/rules.yaml:2: rule #1 ('a'): match: expected a mapping, found '/a'"]),
    ("a require that is not a mapping lacks no factors", CONFIG,
     "rules:\n  - {name: a, match: {paths: [/a]}, require: totp}\n",
     ["policies/rules.yaml:2: rule #1 ('a'): require: expected a mapping, found 'totp'"]),
    ("a wrong policies value reads no rules from elsewhere", CONFIG + "policies: 5\n",
     "rules:\n  - {name: a, match: {paths: [a]}, action: allow}\n",
     ["c.yaml:5: policies: expected a string, found the number 5"]),
    ("a configuration that is not a mapping lacks nothing", "- upstream\n", POLICY,
     ["c.yaml:1: expected a mapping, found a list"]),
]


@pytest.mark.parametrize("config,policy,expected", [c[1:] for c in NO_CASCADE],
                         ids=[c[0] for c in NO_CASCADE])
def test_one_mistake_one_message(config: str, policy: str, expected: list[str]) -> None:
    assert problems(config, policy) == expected


# ---------------------------------------------------------------------------- YAML syntax

SYNTAX = [
    ("tab indenting", "upstream:\n\turl: http://x\n",
     "2:1: YAML syntax error: a tab character cannot indent YAML; use spaces"),
    ("tab among spaces", "upstream:\n  url: http://x\n \t read_timeout: 2s\n",
     "3:2: YAML syntax error: a tab character cannot indent YAML; use spaces"),
    ("unclosed bracket", "upstream: {url: http://x}\ntrusted_proxies: [10.0.0.0/8\n",
     "2:18: YAML syntax error: this '[' is never closed; add ']' where the list ends"),
    ("bracket closed by a brace", "upstream: {url: http://x}\ntrusted_proxies: [10.0.0.0/8}\n",
     "2:29: YAML syntax error: expected ',' or ']' in the list opened with '[' on line 2, "
     "found '}'"),
    ("unclosed brace", "realm: r\nupstream: {url: http://x\n",
     "2:11: YAML syntax error: this '{' is never closed; add '}' where the mapping ends"),
    ("brace left open", "upstream: {url: http://x\nrealm: r\n",
     "2:6: YAML syntax error: expected ',' or '}' in the mapping opened with '{' on line 1, "
     "found ':'; is its '}' missing?"),
    ("unclosed double quote", 'upstream: {url: http://x}\nrealm: "legacy\nprefix: /x\n',
     '2:8: YAML syntax error: the string opened here with " is never closed; add the '
     'closing "'),
    ("unclosed single quote", "upstream: {url: http://x}\nrealm: 'legacy\n",
     "2:8: YAML syntax error: the string opened here with ' is never closed; add the "
     "closing '"),
    ("indented too far", "upstream:\n  url: http://x\n    read_timeout: 2s\n",
     "3:5: YAML syntax error: this line is indented more than the line above it, whose key "
     "already has a value; indent it like the keys it belongs with"),
    ("indented between two levels", "upstream:\n  url: http://x\n read_timeout: 2s\n",
     "3:2: YAML syntax error: this line is indented by 1 space, which lines up with nothing "
     "above it; indent it like the keys it belongs with"),
    ("list item among keys", "upstream:\n  url: http://x\n  - read_timeout\n",
     "3:3: YAML syntax error: a list item cannot appear among the keys of a mapping; check "
     "its indentation"),
    ("no colon", "upstream:\n  url http://x\n  read_timeout: 2s\n",
     "2:3: YAML syntax error: expected 'key: value', found a line without ':'"),
    ("colon in a plain value", "upstream: {url: http://x}\nrealm: legacy: api\n",
     "2:14: YAML syntax error: a value that contains ': ' must be put in quotes"),
    ("character that starts no value", "upstream: {url: http://x}\nrealm: @api\n",
     "2:8: YAML syntax error: '@' cannot start a value; put the value in quotes"),
    ("two documents", "upstream: {url: http://x}\n---\nrealm: r\n",
     "2:1: YAML syntax error: a second YAML document starts here; the file must hold only one"),
    ("undefined alias", "upstream: *up\n",
     "1:11: YAML syntax error: the alias *up refers to no anchor &up written before it"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in SYNTAX], ids=[c[0] for c in SYNTAX])
def test_a_yaml_syntax_error_in_the_config_is_located_and_worded_plainly(
        text: str, message: str) -> None:
    assert problems(text) == [f"c.yaml:{message}"]


POLICY_SYNTAX = [
    ("tab indenting", "rules:\n\t- name: a\n",
     "2:1: YAML syntax error: a tab character cannot indent YAML; use spaces"),
    ("unclosed bracket", "rules:\n  - name: a\n    match: {paths: [/a, /b}\n    action: allow\n",
     "3:27: YAML syntax error: expected ',' or ']' in the list opened with '[' on line 3, "
     "found '}'"),
    ("unclosed quote", 'rules:\n  - name: "a\n    action: allow\n',
     '2:11: YAML syntax error: the string opened here with " is never closed; add the '
     'closing "'),
    ("a key among list items", "rules:\n  - name: a\n  action: allow\n",
     "3:3: YAML syntax error: a key cannot appear between the items of a list; indent it like "
     "the keys of the item above it"),
    ("indented between two levels", "rules:\n  - name: a\n    match: {paths: [/a]}\n   action: allow\n",
     "4:4: YAML syntax error: this line is indented by 3 spaces, which lines up with nothing "
     "above it; indent it like the keys it belongs with"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in POLICY_SYNTAX],
                         ids=[c[0] for c in POLICY_SYNTAX])
def test_a_yaml_syntax_error_in_a_policy_file_is_located_and_the_others_still_checked(
        text: str, message: str) -> None:
    assert problems(policy=None, files={
        "10-bad.yaml": text,
        "20-good.yaml": "rules:\n  - {name: b, match: {methods: [get]}, action: allow}\n",
    }) == [f"policies/10-bad.yaml:{message}",
           "policies/20-good.yaml:2: rule #1 ('b'): match.methods: 'get' is not upper case "
           "(write 'GET')"]


def test_text_that_is_not_utf8_is_located() -> None:
    Path("c.yaml").write_bytes(b"upstream: {url: http://x}\nrealm: caf\xc3\xa9 \xff\n")
    assert list(check_settings("c.yaml").errors) == [
        "c.yaml:2:13: expected UTF-8 text, found the byte 0xff"]


@pytest.mark.parametrize("listen,metrics", [("127.0.0.1:8080", "127.0.0.1:8080"),
                                            ("0.0.0.0:8080", "127.0.0.1:8080"),
                                            ("127.0.0.1:8080", "0.0.0.0:8080")])
def test_metrics_are_never_on_the_public_port(listen: str, metrics: str) -> None:
    found = problems(CONFIG + f"listen: {listen}\nmetrics: {{listen: {metrics}}}\n")
    assert [p for p in found if "metrics.listen" in p] == [
        f"c.yaml:6: metrics.listen: expected another address than listen (metrics are never "
        f"on the public port), found '{metrics}'"]
    assert not problems(CONFIG + f"listen: {listen}\nmetrics: {{listen: 127.0.0.1:9108}}\n")
