"""The client commands' command lines and terminal prompts, in process (the commands
against a real gateway are in tests/e2e/test_client.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.terminal import NoAnswer, Terminal, UsageError, split_user
from gateway.client import RESEND, CodePrompt, Pause


@pytest.mark.parametrize("argv", [
    ["request", "GET", "not a url"],
    ["request", "GET", "ftp://example.test/x"],
    ["request", "GET", "http://127.0.0.1:9/x", "-H", "no colon"],
    ["request", "GET", "http://127.0.0.1:9/x", "-H", "Two words: x"],
    ["request", "POST", "http://127.0.0.1:9/x", "--json", "{nope"],
    ["request", "POST", "http://127.0.0.1:9/x", "--data", "@/nonexistent/file"],
    ["request", "GET", "http://127.0.0.1:9/x", "-u", ":pw"],
    ["enrol", "totp", "--url", "ftp://x", "-u", "walter:pw"],
    ["enrol", "totp", "--url", "http://127.0.0.1:9", "--prefix", "stepgate", "-u", "w:pw"],
])
def test_usage_errors_exit_2_before_any_request(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stepgate: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["request", "GET"],
    ["request", "POST", "http://x.test/", "--json", "{}", "--data", "x"],
    ["enrol", "webauthn", "--url", "http://x.test"],
    ["enrol", "totp"],
])
def test_parser_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_unreachable_gateway_is_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["request", "GET", "http://127.0.0.1:9/x", "--timeout", "2"]) == 1
    assert "ConnectError" in capsys.readouterr().err


def test_data_from_a_file_and_json_checked(tmp_path: Path) -> None:
    from argparse import Namespace

    from gateway.cli.request import body_of
    f = tmp_path / "b.json"
    f.write_bytes(b'{"a": 1}')
    assert body_of(Namespace(json=f"@{f}", data=None)) == (b'{"a": 1}', "application/json")
    assert body_of(Namespace(json=None, data="k=v")) == (b"k=v", None)
    assert body_of(Namespace(json=None, data=None)) == (None, None)
    with pytest.raises(UsageError):
        body_of(Namespace(json="[1,", data=None))


def test_split_user() -> None:
    assert split_user("alice:pw:with:colons") == ("alice", "pw:with:colons")
    assert split_user("alice:") == ("alice", "")
    assert split_user("alice") == ("alice", None)
    assert split_user(None) is None


def terminal(lines: str) -> tuple[Terminal, io.StringIO]:
    err = io.StringIO()
    return Terminal(stdin=io.StringIO(lines), stderr=err), err


def test_codes_come_from_stdin_when_it_is_not_a_terminal() -> None:
    term, err = terminal(" 123456 \n")
    first = CodePrompt(factor="totp", rule="transfers", attempts_left=5)
    assert term.code("totp", first) == "123456"
    assert err.getvalue() == "totp code (rule transfers): \n"


def test_a_retry_says_why_and_how_many_attempts_are_left() -> None:
    term, err = terminal("654321\n")
    again = CodePrompt(factor="totp", rule="transfers", attempt=2, attempts_left=4,
                       error="Wrong code: the code is not valid", step=1, steps=2)
    assert term.code("totp", again) == "654321"
    assert err.getvalue() == ("Wrong code: the code is not valid.\n"
                              "totp code (factor 1 of 2, rule transfers, 4 attempt(s) left): \n")


def test_delivered_codes_can_be_sent_again() -> None:
    term, err = terminal("r\n")
    sms = CodePrompt(factor="sms", rule="r", hint="Code sent to +33 •• 89", resend_after=30)
    assert term.code("sms", sms) is RESEND
    assert "Code sent to +33 •• 89\n" in err.getvalue() and "'r' sends a new code" in err.getvalue()
    term, _ = terminal("r\n")  # 'r' is just a (wrong) code for a factor that sends nothing
    assert term.code("totp", CodePrompt(factor="totp", rule="x")) == "r"


@pytest.mark.parametrize("lines", ["", "\n"])
def test_no_answer(lines: str) -> None:
    term, _ = terminal(lines)
    with pytest.raises(NoAnswer):
        term.code("totp", CodePrompt(factor="totp", rule="x"))


def test_waiting_is_said_on_stderr() -> None:
    term, err = terminal("")
    term.waiting(Pause(seconds=2, status=429, title="Too many failed attempts", detail="paused"))
    assert err.getvalue() == ("stepgate: Too many failed attempts: paused; waiting 2 s before "
                              "trying again\n")


def test_factor_preference_is_not_the_kind_of_factor_enrolled() -> None:
    from gateway.cli import parser
    args = parser().parse_args(["enrol", "totp", "--url", "http://x.test", "--factor", "recovery"])
    assert (args.kind, args.prefer) == ("totp", "recovery")
    assert parser().parse_args(["enrol", "totp", "--url", "http://x.test"]).prefer is None
    args = parser().parse_args(["request", "GET", "http://x.test/", "--factor", "sms"])
    assert args.prefer == "sms"
