"""What the client commands share: asking a person for passwords and second-factor codes
(prompted on standard error without echo, or read a line at a time from standard input
when it is not a terminal, as scripts and tests pipe them in), and their common options."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TextIO

import httpx

from gateway.client import RESEND, CodePrompt, Pause
from gateway.client._prompt import _Resend

RESEND_WORDS = ("r", "resend")


class NoAnswer(Exception):
    """Standard input ended (or the person pressed Ctrl-C/Ctrl-D) before an answer."""


class Terminal:
    def __init__(self, stdin: TextIO | None = None, stderr: TextIO | None = None,
                 stdin_free: bool = True) -> None:
        self.stdin = stdin or sys.stdin
        self.stderr = stderr or sys.stderr
        # When the request body comes from standard input, answers come from the terminal.
        self.stdin_free = stdin_free

    def say(self, text: str) -> None:
        sys.stdout.flush()  # what was printed before the prompt shows before it
        print(text, file=self.stderr, flush=True)

    def secret(self, prompt: str) -> str:
        """One line, not echoed on a terminal. Never logged anywhere."""
        sys.stdout.flush()
        try:
            if self.stdin_free and not self.stdin.isatty():
                self.stderr.write(prompt)
                self.stderr.flush()
                line = self.stdin.readline()
                if not line:
                    raise NoAnswer("standard input ended before an answer")
                self.stderr.write("\n")
                return line.rstrip("\r\n")
            return getpass.getpass(prompt, stream=self.stderr)
        except (EOFError, KeyboardInterrupt) as exc:
            raise NoAnswer("no answer given") from exc

    def code(self, factor: str, info: CodePrompt) -> str | _Resend:
        """The code callback of StepgateAuth: one prompt per attempt, saying why again."""
        if info.error:
            self.say(f"{info.error}.")
        if info.hint and not info.retry:
            self.say(info.hint)
        label = f"{factor} code"
        notes = []
        if info.steps > 1:
            notes.append(f"factor {info.step} of {info.steps}")
        if info.rule:
            notes.append(f"rule {info.rule}")
        if info.retry and info.attempts_left is not None:
            notes.append(f"{info.attempts_left} attempt(s) left")
        if info.delivered:
            notes.append("'r' sends a new code")
        prompt = f"{label} ({', '.join(notes)}): " if notes else f"{label}: "
        answer = self.secret(prompt).strip()
        if info.delivered and answer.lower() in RESEND_WORDS:
            return RESEND
        if not answer:
            raise NoAnswer("no code given")
        return answer

    def waiting(self, pause: Pause) -> None:
        """The on_wait hook: say why nothing happens for a while."""
        self.say(f"stepgate: {pause}")


class UsageError(Exception):
    """A command line that cannot be run as written (exit status 2)."""


def check_url(url: str, expected: str) -> httpx.URL:
    """An http(s) URL with a host, or UsageError saying ``expected, not <url>``."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"not a URL: {url!r} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"{expected}, not {url!r}")
    return parsed


def split_user(value: str | None) -> tuple[str, str | None] | None:
    """``alice:pw`` → (alice, pw); ``alice`` → (alice, None): the password is asked."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not user:
        raise UsageError("-u expects user[:password]")
    return user, password if sep else None


def credentials(args: argparse.Namespace, term: Terminal) -> tuple[str, str] | None:
    pair = split_user(args.user)
    if pair is None:
        return None
    user, password = pair
    if password is None:
        password = term.secret(f"Password for {user}: ")
    return user, password


def complain(text: str) -> None:
    print(f"stepgate: {text}", file=sys.stderr, flush=True)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--user", metavar="USER[:PASSWORD]",
                   help="HTTP Basic credentials; the password is asked when left out")
    p.add_argument("--factor", dest="prefer", help="the factor to answer with when the rule accepts several "
                   "(e.g. recovery)")
    p.add_argument("--max-wait", type=float, default=30.0, metavar="SECONDS",
                   help="longest total wait when the gateway answers 429 (default 30)")
