"""``stepgate enrol totp``: a person enrols a TOTP factor through the gateway's self-service
endpoints (docs/protocol.md): the QR code drawn in the terminal from the otpauth URI, the secret,
a code to confirm, and the recovery codes when the gateway hands some out."""

from __future__ import annotations

import argparse
import io
import sys
import time
from typing import Any

import httpx
import segno

from gateway.cli.terminal import NoAnswer, Terminal, UsageError, check_url, complain, credentials
from gateway.client import SecondFactorError, StepgateAuth
from gateway.client._errors import describe, problem_of
from gateway.client._flow import retry_after, same_origin

# Without attempts_left in a refusal, this many codes are tried before giving up.
CONFIRM_TRIES = 5


def terminal_qr(uri: str) -> str:
    """The QR code of ``uri`` in Unicode half blocks (two modules a character)."""
    buf = io.StringIO()
    segno.make(uri, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()


def gateway_url(url: str, prefix: str) -> tuple[httpx.URL, str]:
    base = check_url(url, "--url expects http://host[:port] or https://...")
    if not prefix.startswith("/") or prefix.endswith("/") and prefix != "/":
        raise UsageError(f"--prefix expects a path like /.stepgate, not {prefix!r}")
    return base, prefix.rstrip("/")


class Failed(Exception):
    """The gateway refused a step; the message says which and why."""


def refused(what: str, response: httpx.Response) -> Failed:
    return Failed(f"{what}: {describe(problem_of(response), response)}")


def json_doc(response: httpx.Response, what: str) -> dict[str, Any]:
    doc = problem_of(response)
    if not doc:
        raise Failed(f"{what}: the gateway's answer is not a JSON object "
                     f"({response.headers.get('content-type', 'no content type')})")
    return doc


def show(doc: dict[str, Any]) -> None:
    uri, secret = doc.get("otpauth_uri"), doc.get("secret")
    if not isinstance(uri, str) or not isinstance(secret, str):
        raise Failed("the gateway's enrolment answer carries no otpauth_uri or secret")
    out = sys.stdout
    out.write("Scan this QR code with your authenticator app:\n\n")
    out.write(terminal_qr(uri))
    out.write(f"\nOr type the secret in: {secret}\n")
    out.write(f"otpauth URI: {uri}\n\n")
    out.flush()


def confirm(client: httpx.Client, url: httpx.URL, term: Terminal, max_wait: float) -> dict[str, Any]:
    """Ask for codes until the gateway accepts one; waits out a 429 within ``max_wait``."""
    error: str | None = None
    waited = 0.0
    tries = 0
    while True:
        if error:
            term.say(f"{error}.")
        code = term.secret("Code from your authenticator app: ").strip()
        if not code:
            raise NoAnswer("no code given")
        r = client.post(url, json={"code": code})
        if r.status_code == 200:
            return json_doc(r, "confirming the factor")
        problem = problem_of(r)
        tries += 1
        if r.status_code == 429:
            seconds = retry_after(r)
            if seconds is None or waited + max(seconds, 1.0) > max_wait:
                raise refused("confirming the factor", r)
            waited += max(seconds, 1.0)
            term.say(f"stepgate: {problem.get('title', 'Too many attempts')}: "
                     f"{problem.get('detail', '')}; waiting {seconds:g} s")
            time.sleep(seconds)
            error = None
            continue
        left = problem.get("attempts_left")
        wrong = r.status_code == 403 and problem.get("type") == "urn:stepgate:problem:wrong-code"
        if not wrong or (isinstance(left, int) and left <= 0) or (left is None and tries >= CONFIRM_TRIES):
            raise refused("confirming the factor", r)
        error = describe(problem, r)


def enrol_totp(args: argparse.Namespace, term: Terminal) -> int:
    base, prefix = gateway_url(args.url, args.prefix)
    basic = credentials(args, term)
    auth = StepgateAuth(term.code, basic=basic, factor=args.prefer, max_wait=args.max_wait,
                        on_wait=term.waiting)
    body = {"label": args.label} if args.label else {}
    # JSON explicitly: the gateway may answer a plain-text form to other clients.
    with httpx.Client(base_url=base, auth=auth, headers={"Accept": "application/json"},
                      timeout=30.0, follow_redirects=False) as client:
        r = client.post(f"{prefix}/factors/totp", json=body)
        if r.status_code != 201:
            raise refused("enrolling a TOTP factor", r)
        doc = json_doc(r, "enrolling a TOTP factor")
        fid = doc.get("id")
        if not isinstance(fid, str):
            raise Failed("the gateway's enrolment answer carries no factor id")
        show(doc)
        target = doc.get("confirm_uri") or f"{prefix}/factors/{fid}/confirm"
        try:
            url = same_origin(base.join(prefix + "/"), target, "confirm_uri")
        except SecondFactorError as exc:
            raise Failed(str(exc)) from None
        done = confirm(client, url, term, args.max_wait)
    print(f"TOTP factor {fid} is {done.get('status', 'active')}.")
    codes = done.get("recovery_codes")
    if isinstance(codes, list) and codes:
        print("\nRecovery codes: each works once, when the authenticator is not at hand. "
              "Keep them somewhere safe; they are not shown again.")
        for c in codes:
            print(f"  {c}")
    sys.stdout.flush()
    return 0


def cmd_enrol(args: argparse.Namespace) -> int:
    term = Terminal()
    try:
        return enrol_totp(args, term)
    except UsageError as exc:
        complain(f"enrol: {exc}")
        return 2
    except (Failed, SecondFactorError, NoAnswer) as exc:
        complain(str(exc))
        return 1
    except httpx.HTTPError as exc:
        complain(f"{args.url}: {exc.__class__.__name__}: {exc}")
        return 1
