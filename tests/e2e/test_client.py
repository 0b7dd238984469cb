"""The client helper and the client commands end to end: a real upstream process, a real
gateway process, and StepgateAuth / ``stepgate request`` / ``stepgate enrol`` driving them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main
from gateway.client import (
    RESEND,
    BodyNotReplayable,
    CachedToken,
    CodePrompt,
    Pause,
    SecondFactorError,
    StepgateAuth,
    TokenKey,
)

from ..conftest import HERE, PASSWORD, ROOT, GatewayProcess, Upstream, basic
from ..totp_ref import Device

pytestmark = pytest.mark.e2e
P = "/.stepgate"
ADMIN_KEY = "admin-key-for-client-tests-0123456789"
CODE = re.compile(r"code is (\d{6,8})")

RULES = {"rules": [
    {"name": "transfers", "match": {"methods": ["POST"], "paths": ["/accounts/{id}/transfers"]},
     "require": {"factors": ["totp", "recovery"], "binding": "request"}},
    {"name": "settings", "match": {"paths": ["/settings/**"]},
     "require": {"factors": ["totp", "recovery"], "binding": "session", "scope": "settings",
                 "ttl": "5m"}},
    {"name": "reports", "match": {"paths": ["/reports/**"]},
     "require": {"factors": ["totp", "recovery"], "binding": "route", "uses": 2}},
    {"name": "vault", "match": {"paths": ["/vault/**"]},
     "require": {"factors": {"all_of": ["totp", "recovery"]}, "binding": "route"}},
    {"name": "texted", "match": {"paths": ["/texted/**"]},
     "require": {"factors": ["sms"], "binding": "route"}},
    {"name": "closed", "match": {"paths": ["/closed/**"]}, "action": "deny"},
    {"name": "rest", "match": {"paths": ["/**"]}, "action": "allow"},
]}


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-outbox") / "sent.jsonl"


@pytest.fixture(scope="module")
def gw(make_gateway: Any, outbox: Path) -> GatewayProcess:
    """One gateway for the module; each test uses its own user. Two wrong codes in a row
    lock a user for a second, so a 429 arrives quickly and passes quickly."""
    sender = [sys.executable, str(HERE / "send_code.py"), str(outbox)]
    return make_gateway(
        rules=RULES, env={"STEPGATE_ADMIN_KEY": ADMIN_KEY},
        admin={"key_env": "STEPGATE_ADMIN_KEY"},
        factors={"totp": {"issuer": "Test Bank"},
                 "sms": {"deliver": {"command": sender, "timeout": "5s"}}},
        throttle={"lock_after": 2, "lock_base": "1s", "lock_max": "2s", "resend_after": "1s"},
    )


def enrol_totp(gw: GatewayProcess, user: str) -> Device:
    with httpx.Client(base_url=gw.url, headers=basic(user)) as c:
        doc = c.post(f"{P}/factors/totp", json={}).json()
        device = Device(doc["secret"])
        assert c.post(f"{P}/factors/{doc['id']}/confirm",
                      json={"code": device.code()}).status_code == 200
    return device


def recovery_codes(gw: GatewayProcess, user: str) -> list[str]:
    r = httpx.post(f"{gw.url}{P}/recovery-codes", json={}, headers=basic(user))
    assert r.status_code == 201, r.text
    return list(r.json()["codes"])


class Asked:
    """A code callback that records what it was told."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.prompts: list[CodePrompt] = []

    def __call__(self, factor: str, info: CodePrompt) -> Any:
        self.prompts.append(info)
        answer = self.answers.pop(0)
        return answer() if callable(answer) else answer


def upstream_user(record: dict[str, Any]) -> str:
    return {k.lower(): v for k, v in record["headers"]}["x-stepgate-user"]


# ---------------------------------------------------------------- StepgateAuth, sync

def test_ten_requests_to_a_session_route_ask_for_one_code(gw: GatewayProcess,
                                                          upstream: Upstream) -> None:
    device = enrol_totp(gw, "alice")
    asked = Asked(device.code)
    upstream.clear()
    auth = StepgateAuth(asked, basic=("alice", PASSWORD))
    with httpx.Client(base_url=gw.url, auth=auth) as c:
        answers = [c.get("/settings/profile") for _ in range(10)]
        other = c.get("/settings/other")  # the same session token, learnt for a new path
    assert [r.status_code for r in answers] == [200] * 10
    assert len(asked.prompts) == 1 and asked.prompts[0].factor == "totp"
    assert asked.prompts[0].rule == "settings" and not asked.prompts[0].retry
    # only the first request met a 401 (then challenge, verify); the others carried the
    # kept token at once
    assert [h.status_code for h in answers[0].history] == [401, 201, 200]
    assert [len(r.history) for r in answers[1:]] == [0] * 9
    assert other.status_code == 200 and [h.status_code for h in other.history] == [401]
    assert len(upstream.records()) == 11
    assert all(upstream_user(r) == "alice" for r in upstream.records())
    kept = auth.cache.get(TokenKey(gw.url, "alice", "settings"))
    assert kept is not None and kept.binding == "session" and kept.uses_left is None


def test_route_token_uses_are_counted(gw: GatewayProcess, upstream: Upstream) -> None:
    codes = recovery_codes(gw, "bob")
    asked = Asked(codes[0], codes[1])
    auth = StepgateAuth(asked, basic=("bob", PASSWORD), factor="recovery")
    upstream.clear()
    with httpx.Client(base_url=gw.url, auth=auth) as c:
        statuses = [c.get("/reports/q1").status_code for _ in range(3)]
    # uses: 2 — the third request needs a new token, and the client knew it: no refused 401
    assert statuses == [200, 200, 200]
    assert len(asked.prompts) == 2
    assert len(upstream.records()) == 3


def test_wrong_code_then_right_one(gw: GatewayProcess, upstream: Upstream) -> None:
    device = enrol_totp(gw, "carol")
    asked = Asked("000000", device.code)
    upstream.clear()
    r = httpx.post(f"{gw.url}/accounts/1/transfers", json={"amount": 5},
                   auth=StepgateAuth(asked, basic=("carol", PASSWORD)))
    assert r.status_code == 200, r.text
    first, second = asked.prompts
    assert (first.retry, first.attempt, first.attempts_left, first.error) == (False, 1, 5, None)
    assert (second.retry, second.attempt, second.attempts_left) == (True, 2, 4)
    assert second["attempts_left"] == 4  # the mapping view of the first client agrees
    assert second.error == "Wrong code: the code is not valid"
    assert len(upstream.records()) == 1


def test_the_same_refused_code_is_not_sent_twice(gw: GatewayProcess) -> None:
    enrol_totp(gw, "dave")
    with pytest.raises(SecondFactorError) as err:
        httpx.post(f"{gw.url}/accounts/1/transfers", json={},
                   auth=StepgateAuth(lambda f, i: "123456", basic=("dave", PASSWORD)))
    assert err.value.status == 403 and err.value.problem["attempts_left"] == 4
    assert "Wrong code (403): the code is not valid; 4 attempt(s) left" in str(err.value)


def test_locked_user_is_waited_out(gw: GatewayProcess, upstream: Upstream) -> None:
    device = enrol_totp(gw, "erin")
    asked = Asked("000000", "111111", device.code)
    pauses: list[Pause] = []
    upstream.clear()
    r = httpx.post(f"{gw.url}/accounts/2/transfers", json={"amount": 1},
                   auth=StepgateAuth(asked, basic=("erin", PASSWORD), max_wait=5,
                                     on_wait=pauses.append))
    assert r.status_code == 200, r.text
    (pause,) = pauses
    assert pause.status == 429 and pause.seconds == 1
    assert pause.title == "Too many failed attempts"
    assert pause.problem["type"] == "urn:stepgate:problem:locked"
    last = asked.prompts[-1]
    assert last.retry and last.attempt == 3
    assert last.attempts_left == 3  # read back from the challenge after the wait
    assert last.error is not None and last.error.startswith("Too many failed attempts")
    assert len(upstream.records()) == 1


def test_lock_longer_than_max_wait_raises_with_title_and_detail(gw: GatewayProcess,
                                                                upstream: Upstream) -> None:
    codes = recovery_codes(gw, "frank")
    pauses: list[Pause] = []
    upstream.clear()
    auth = StepgateAuth(Asked("AAAA-AAAA-AAAA", "BBBB-BBBB-BBBB", codes[0]),
                        basic=("frank", PASSWORD), max_wait=0.5, on_wait=pauses.append)
    with pytest.raises(SecondFactorError) as err:
        httpx.post(f"{gw.url}/accounts/3/transfers", json={}, auth=auth)
    assert err.value.status == 429 and pauses == []
    message = str(err.value)
    assert "Too many failed attempts" in message
    assert "second-factor attempts for this account are paused" in message
    assert "max_wait" in message
    assert upstream.records() == []


def test_all_of_walks_both_factors(gw: GatewayProcess, upstream: Upstream) -> None:
    codes = recovery_codes(gw, "grace")
    # grace has recovery codes, so enrolling TOTP needs a manage token: a recovery code
    manage = StepgateAuth(Asked(codes[0]), basic=("grace", PASSWORD), factor="recovery")
    with httpx.Client(base_url=gw.url, auth=manage) as c:
        doc = c.post(f"{P}/factors/totp", json={}).json()
        device = Device(doc["secret"])
        assert c.post(doc["confirm_uri"], json={"code": device.code()}).status_code == 200
    asked = Asked(lambda: device.code(), codes[1])
    upstream.clear()
    r = httpx.get(f"{gw.url}/vault/box", auth=StepgateAuth(asked, basic=("grace", PASSWORD)))
    assert r.status_code == 200, r.text
    assert [(p.factor, p.step, p.steps) for p in asked.prompts] == [("totp", 1, 2),
                                                                    ("recovery", 2, 2)]
    h = {k.lower(): v for k, v in upstream.records()[0]["headers"]}
    assert h["x-stepgate-factor"] == "totp+recovery"


def test_refused_kept_token_is_dropped_and_the_handshake_runs_again(
        gw: GatewayProcess, upstream: Upstream) -> None:
    codes = recovery_codes(gw, "heidi")
    asked = Asked(codes[0], codes[1])
    auth = StepgateAuth(asked, basic=("heidi", PASSWORD), factor="recovery")
    key = TokenKey(gw.url, "heidi", "settings")
    with httpx.Client(base_url=gw.url, auth=auth) as c:
        assert c.get("/settings/a").status_code == 200
        first = auth.cache.get(key)
        # unlocking a user revokes every outstanding token of that user (docs/protocol.md)
        assert httpx.post(f"{gw.url}{P}/admin/users/heidi/unlock", json={},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
        upstream.clear()
        r = c.get("/settings/a")
        assert r.status_code == 200, r.text
        assert [h.status_code for h in r.history] == [401, 201, 200]
        assert r.history[0].json()["detail"] == "token was revoked"
        assert len(asked.prompts) == 2
        second = auth.cache.get(key)
        assert first is not None and second is not None and second.value != first.value
        assert len(upstream.records()) == 1
        assert c.get("/settings/b").status_code == 200
    assert len(asked.prompts) == 2


def test_a_broken_kept_token_is_dropped_too(gw: GatewayProcess) -> None:
    codes = recovery_codes(gw, "ivan")
    asked = Asked(codes[0])
    auth = StepgateAuth(asked, basic=("ivan", PASSWORD), factor="recovery")
    key = TokenKey(gw.url, "ivan", "settings")
    with httpx.Client(base_url=gw.url, auth=auth) as c:
        assert c.get("/settings/a").status_code == 200
        good = auth.cache.get(key)
        assert good is not None
        auth.cache.put(key, CachedToken("not-a-token", good.header, "session", good.expires_at))
        asked.answers.append(codes[1])
        r = c.get("/settings/a")
    assert r.status_code == 200 and [h.status_code for h in r.history] == [401, 201, 200]
    assert len(asked.prompts) == 2
    kept = auth.cache.get(key)
    assert kept is not None and kept.value not in ("not-a-token", good.value)


def test_delivered_code_resend_after_waiting(gw: GatewayProcess, outbox: Path,
                                            upstream: Upstream) -> None:
    phone = "+4915100000001"

    def texts() -> list[str]:
        lines = outbox.read_text().splitlines() if outbox.exists() else []
        return [m.group(1) for d in map(json.loads, lines) if d["address"] == phone
                for m in [CODE.search(d["message"])] if m]
    with httpx.Client(base_url=gw.url, headers=basic("judy")) as c:
        r = c.post(f"{P}/factors/sms", json={"address": phone}).json()
        assert c.post(r["confirm_uri"], json={"code": texts()[-1]}).status_code == 200
    pauses: list[Pause] = []
    asked = Asked(RESEND, lambda: texts()[-1])
    upstream.clear()
    got = httpx.get(f"{gw.url}/texted/x", timeout=20,
                    auth=StepgateAuth(asked, basic=("judy", PASSWORD), on_wait=pauses.append))
    assert got.status_code == 200, got.text
    first, second = asked.prompts
    assert first.delivered and first.resend_after == 1 and first.resent == 0
    assert first.hint and "0001" not in first.hint  # masked
    assert second.resent == 1 and not second.retry
    assert [p.problem["type"] for p in pauses] == ["urn:stepgate:problem:resend-too-soon"]
    assert len(texts()) == 3  # enrolment, the first challenge, the resend
    assert len(upstream.records()) == 1


def _chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 4096):
        yield b"x" * 4096


def test_streamed_body_goes_through_on_a_kept_session_token(gw: GatewayProcess,
                                                            upstream: Upstream) -> None:
    codes = recovery_codes(gw, "mallory")
    asked = Asked(codes[0])
    auth = StepgateAuth(asked, basic=("mallory", PASSWORD), factor="recovery")
    with httpx.Client(base_url=gw.url, auth=auth, timeout=20) as c:
        assert c.get("/settings/x").status_code == 200
        # a path this client has not seen: the 401 comes after the body left, so the client
        # says to send again; the session token is kept, no second code
        with pytest.raises(BodyNotReplayable) as err:
            c.put("/settings/upload", content=_chunks(256 * 1024))
        assert err.value.token_kept and "send the request again" in str(err.value)
        upstream.clear()
        r = c.put("/settings/upload", content=_chunks(256 * 1024))
    assert r.status_code == 200 and r.history == []
    (rec,) = upstream.records()
    assert rec["body_len"] == 256 * 1024
    assert len(asked.prompts) == 1


def test_streamed_body_on_a_request_bound_rule_is_a_clear_error(gw: GatewayProcess,
                                                                upstream: Upstream) -> None:
    recovery_codes(gw, "niaj")
    asked = Asked()
    upstream.clear()
    with pytest.raises(BodyNotReplayable) as err:
        httpx.post(f"{gw.url}/accounts/1/transfers", content=_chunks(64 * 1024), timeout=20,
                   auth=StepgateAuth(asked, basic=("niaj", PASSWORD)))
    assert "binds its token to the exact request" in str(err.value)
    assert not err.value.token_kept and err.value.status == 401
    assert asked.prompts == [] and upstream.records() == []


# ---------------------------------------------------------------- StepgateAuth, async

def test_async_client_does_the_same(gw: GatewayProcess, upstream: Upstream) -> None:
    device = enrol_totp(gw, "peggy")
    prompts: list[CodePrompt] = []

    async def code(factor: str, info: CodePrompt) -> str:
        prompts.append(info)
        await asyncio.sleep(0)
        return "000000" if len(prompts) == 1 else device.code()

    async def main() -> list[httpx.Response]:
        auth = StepgateAuth(code, basic=("peggy", PASSWORD))
        async with httpx.AsyncClient(base_url=gw.url, auth=auth) as c:
            return [await c.get("/settings/profile") for _ in range(10)]
    upstream.clear()
    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [200] * 10
    assert [(p.retry, p.attempts_left) for p in prompts] == [(False, 5), (True, 4)]
    assert [h.status_code for h in answers[0].history] == [401, 201, 403, 200]
    assert [len(r.history) for r in answers[1:]] == [0] * 9
    assert len(upstream.records()) == 10


# ---------------------------------------------------------------- the commands

def stepgate(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, env=env, cwd=ROOT)


def test_request_command_answers_the_challenge_from_stdin(gw: GatewayProcess,
                                                          upstream: Upstream) -> None:
    device = enrol_totp(gw, "rupert")
    upstream.clear()
    # no password on the command line: asked first, then the code
    r = stepgate("request", "POST", f"{gw.url}/accounts/4/transfers?x=1", "-u", "rupert",
                 "-H", "X-Note: hi", "--json", '{"amount": 7}',
                 stdin=f"{PASSWORD}\n{device.code()}\n")
    assert r.returncode == 0, r.stderr
    echoed = json.loads(r.stdout)  # the upstream's body: what it received
    assert echoed["target"] == "/accounts/4/transfers?x=1"
    assert json.loads(echoed["body"]) == {"amount": 7}
    h = {k.lower(): v for k, v in echoed["headers"]}
    assert h["x-stepgate-user"] == "rupert" and h["x-note"] == "hi"
    assert h["content-type"] == "application/json"
    assert "Password for rupert:" in r.stderr and "totp code" in r.stderr
    assert PASSWORD not in r.stderr and device.issued[-1] not in r.stderr
    assert len(upstream.records()) == 1


def test_request_command_exit_statuses(gw: GatewayProcess, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("hello")
    ok = stepgate("request", "PUT", f"{gw.url}/open/x", "-u", f"sybil:{PASSWORD}",
                  "--data", f"@{body}", "-i")
    head, _, answer = ok.stdout.partition("\n\n")  # text mode reads CRLF as LF
    assert ok.returncode == 0 and json.loads(answer)["body"] == "hello"
    assert head.startswith("HTTP/1.1 200 OK\n") and "content-type: application/json" in head.lower()
    denied = stepgate("request", "GET", f"{gw.url}/closed/x", "-u", f"sybil:{PASSWORD}")
    assert denied.returncode == 1
    assert denied.stderr.startswith("stepgate: 403 Forbidden: Forbidden")
    assert json.loads(denied.stdout)["status"] == 403  # the body still goes to stdout
    refused = stepgate("request", "GET", f"{gw.url}/settings/x", "-u", f"sybil:{PASSWORD}",
                       stdin="")
    assert refused.returncode == 1
    assert "stepgate: 403 Forbidden: Second factor not enrolled: this route needs a second " \
        "factor" in refused.stderr


def _read_until(stream: Any, pattern: re.Pattern[str], lines: list[str]) -> re.Match[str]:
    while True:
        line = stream.readline()
        if not line:
            raise AssertionError("output ended: " + "".join(lines))
        lines.append(line)
        m = pattern.search(line)
        if m:
            return m


def enrol_command(gw: GatewayProcess, user: str, first_input: str = "",
                  label: str = "laptop") -> tuple[int, str, str, Device]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "enrol", "totp", "--url", gw.url,
                             "-u", f"{user}:{PASSWORD}", "--label", label],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    killer = threading.Timer(60, proc.kill)
    killer.start()
    try:
        assert proc.stdin and proc.stdout and proc.stderr
        if first_input:
            proc.stdin.write(first_input)
            proc.stdin.flush()
        lines: list[str] = []
        try:
            secret = _read_until(proc.stdout, re.compile(r"secret in: ([A-Z2-7]+)"),
                                 lines).group(1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{proc.stderr.read()}") from None
        device = Device(secret)
        proc.stdin.write(device.code() + "\n")
        proc.stdin.close()
        out = "".join(lines) + proc.stdout.read()
        err = proc.stderr.read()
        return proc.wait(), out, err, device
    finally:
        killer.cancel()


def test_enrol_command_enrols_and_confirms(gw: GatewayProcess) -> None:
    status, out, err, device = enrol_command(gw, "trent")
    assert status == 0, err
    assert "▀" in out or "█" in out or "▄" in out  # the QR code, drawn in half blocks
    assert f"otpauth://totp/Test%20Bank:trent?secret={device.secret}" in out
    assert re.search(r"TOTP factor f_\S+ is active", out)
    factors = httpx.get(f"{gw.url}{P}/factors", headers=basic("trent")).json()["factors"]
    assert [(f["type"], f["status"], f["label"]) for f in factors if f["type"] == "totp"] == [
        ("totp", "active", "laptop")]
    printed = re.findall(r"^  ([A-Z2-7]{4}(?:-[A-Z2-7]{4})+)$", out, re.M)
    recovery = [f for f in factors if f["type"] == "recovery"]
    if recovery:  # a gateway that hands out recovery codes with the first factor
        assert "Recovery codes" in out and len(printed) == recovery[0]["remaining"] > 0
        # they are real: one of them answers a challenge
        r = httpx.get(f"{gw.url}/settings/x", auth=StepgateAuth(
            Asked(printed[-1]), basic=("trent", PASSWORD), factor="recovery"))
        assert r.status_code == 200
    else:
        assert "Recovery codes" not in out and printed == []


def test_enrol_command_steps_up_with_an_existing_factor(gw: GatewayProcess) -> None:
    codes = recovery_codes(gw, "victor")
    status, out, err, _ = enrol_command(gw, "victor", first_input=codes[0] + "\n",
                                        label="tablet")
    assert status == 0, err
    assert "stepgate:manage" in err  # the manage rule was asked for, on stderr
    types = [f["type"] for f in
             httpx.get(f"{gw.url}{P}/factors", headers=basic("victor")).json()["factors"]]
    assert sorted(types) == ["recovery", "totp"]


def test_enrol_command_refusal_names_the_problem(gw: GatewayProcess,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enrol", "totp", "--url", gw.url, "-u", "walter:wrong password"]) == 1
    err = capsys.readouterr().err
    assert "enrolling a TOTP factor: " in err and "(401)" in err
