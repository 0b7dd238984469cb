"""``stepgate check`` (everything ``run`` would refuse, every problem at once), ``stepgate
explain`` (which rule decides a request) and ``stepgate schema`` (JSON Schema for editors).

``check`` validates the file and then asks what ``run`` asks before it serves
(gateway.cli.preflight): the keys, the admin key, the files and the store the
configuration names. It creates nothing.
"""

from __future__ import annotations

import argparse
import json

from gateway.cli.common import USAGE, config_path, keys_file, report, settings
from gateway.cli.preflight import preflight
from gateway.config.load import check_settings
from gateway.config.schema import SCHEMAS


def cmd_check(args: argparse.Namespace) -> int:
    checked = check_settings(config_path(args.config))
    found = preflight(checked, keys_file(args))
    problems = [*checked.errors, *found.problems]
    if problems or checked.settings is None:
        report(problems, found.hints)
        return USAGE
    s = checked.settings
    kinds: dict[str, int] = {}
    for rule in s.rules.rules:
        kinds[rule.action] = kinds.get(rule.action, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no rules"
    print(f"ok: {s.source.name}: {len(s.rules.rules)} rules ({summary}) from "
          f"{len(s.rules.sources)} file(s); default_action {s.default_action}; "
          f"upstream {s.upstream.url}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.decision.paths import canonicalize
    from gateway.decision.policies import PolicyEngine, RequestView
    from gateway.problems import Problem
    s = settings(args.config)
    path, _, query = args.path.partition("?")
    try:
        cp = canonicalize(path.encode(), normalize=s.normalize_paths)
    except Problem as p:
        print(f"{args.method} {args.path}: rejected with 400 before matching: {p.detail}")
        return 1
    headers = []
    for h in args.header or []:
        k, _, v = h.partition(":")
        headers.append((k.strip().lower().encode(), v.strip().encode()))
    body = args.json.encode() if args.json is not None else None
    req = RequestView(args.method.upper(), cp.decoded, (args.host or "").lower(), query.encode(),
                      headers, body)
    try:
        rule, misses = PolicyEngine(s.rules.rules, s.default_action).explain(req)
    except Problem as p:
        print(f"{args.method} {args.path}: rejected with {p.status}: {p.detail}")
        return 1
    for r, reasons in misses:
        print(f"  skip  {r.describe()}: {'; '.join(reasons)}")
    if rule is None:
        print(f"=> no rule matches; default_action: {s.default_action}")
    else:
        what: str = rule.action
        if rule.require is not None:
            rq = rule.require
            joiner = " and " if rq.all_of else " or "
            what = (f"require {joiner.join(rq.factors)} (binding {rq.binding}, "
                    f"ttl {int(rq.ttl)}s)")
        print(f"=> {rule.describe()} matches: {what}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(SCHEMAS[args.kind](), indent=2))
    return 0
