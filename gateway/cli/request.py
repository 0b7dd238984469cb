"""Client-side commands: ``stepgate request`` (one request through the 401 handshake, codes
asked on the terminal) and ``stepgate enrol`` (enrol a factor from a terminal)."""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from gateway.cli.enrol import cmd_enrol
from gateway.cli.terminal import NoAnswer, Terminal, UsageError, add_common, check_url, complain, credentials
from gateway.client import SecondFactorError, StepgateAuth
from gateway.client._errors import problem_of


def headers_of(values: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise UsageError(f"-H expects 'Name: value', not {value!r}")
        out.append((name.strip(), rest.strip()))
    return out


def read_data(value: str) -> bytes:
    """``@file`` (``@-``: standard input) or the text itself, as curl reads ``--data``."""
    if not value.startswith("@"):
        return value.encode()
    path = value[1:]
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def body_of(args: argparse.Namespace) -> tuple[bytes | None, str | None]:
    """The request body and the content type it implies."""
    if args.json is not None:
        raw = read_data(args.json)
        try:
            json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"--json is not valid JSON: {exc}") from None
        return raw, "application/json"
    if args.data is not None:
        return read_data(args.data), None
    return None, None


def failure(response: httpx.Response) -> str:
    """One line for an answer that is not a success: the status, and the problem's title and
    detail when the answer is a problem document."""
    problem = problem_of(response)
    parts = [f"{response.status_code} {response.reason_phrase}".strip()]
    parts += [str(problem[k]) for k in ("title", "detail") if problem.get(k)]
    return ": ".join(parts)


def cmd_request(args: argparse.Namespace) -> int:
    try:
        url = check_url(args.url, "expected an http:// or https:// URL")
        headers = headers_of(args.header)
        body, content_type = body_of(args)
        term = Terminal(stdin_free=not any(v == "@-" for v in (args.data, args.json)))
        basic = credentials(args, term)
    except UsageError as exc:
        complain(f"request: {exc}")
        return 2
    except NoAnswer as exc:
        complain(str(exc))
        return 1
    if content_type and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", content_type))
    auth = StepgateAuth(term.code, basic=basic, factor=args.prefer, max_wait=args.max_wait,
                        on_wait=term.waiting)
    out = sys.stdout.buffer
    try:
        with httpx.Client(timeout=args.timeout, follow_redirects=False) as client, \
                client.stream(args.method.upper(), url, headers=headers, content=body,
                              auth=auth) as response:
            if args.include:
                out.write(f"{response.http_version} {response.status_code} "
                          f"{response.reason_phrase}\r\n".encode("latin-1"))
                for name, value in response.headers.raw:
                    out.write(name + b": " + value + b"\r\n")
                out.write(b"\r\n")
            ok = response.status_code < 400
            if not ok:
                response.read()
                out.write(response.content)
            else:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            out.flush()
    except SecondFactorError as exc:
        complain(str(exc))
        return 1
    except NoAnswer as exc:
        complain(str(exc))
        return 1
    except httpx.HTTPError as exc:
        where = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"  # no userinfo, no query
        complain(f"{args.method.upper()} {where}: {exc.__class__.__name__}: {exc}")
        return 1
    if not ok:
        complain(failure(response))
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``stepgate`` parser."""
    req = sub.add_parser("request", help="send one request through the gateway, answering its "
                         "second-factor challenge on the terminal")
    req.add_argument("method", help="GET, POST, ...")
    req.add_argument("url", help="the full URL, through the gateway")
    add_common(req)
    req.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                     help="a request header; repeatable")
    body = req.add_mutually_exclusive_group()
    body.add_argument("--data", "-d", metavar="@FILE|TEXT",
                      help="the request body: text, or @file (@- reads standard input)")
    body.add_argument("--json", metavar="@FILE|JSON",
                      help="a JSON body (checked), sent with Content-Type: application/json")
    req.add_argument("-i", "--include", action="store_true",
                     help="print the response status line and headers before the body")
    req.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    req.set_defaults(func=cmd_request)

    enrol = sub.add_parser("enrol", help="enrol a second factor for yourself through the gateway")
    enrol.add_argument("kind", choices=["totp"], metavar="{totp}", help="the kind of factor")
    enrol.add_argument("--url", required=True, help="the gateway, e.g. https://api.example.com")
    add_common(enrol)
    enrol.add_argument("--label", help="a name for the factor, e.g. 'phone'")
    enrol.add_argument("--prefix", default="/.stepgate",
                       help="the gateway's own prefix (default /.stepgate)")
    enrol.set_defaults(func=cmd_enrol)


__all__ = ["register"]
