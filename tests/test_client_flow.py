"""The client's handshake against a fake gateway on httpx.MockTransport: which tokens it
keeps and sends, what the code callback is told, waits, resends and refusals."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from typing import Any

import httpx
import pytest

from gateway.client import (
    RESEND,
    BodyNotReplayable,
    CachedToken,
    CodePrompt,
    MemoryTokenCache,
    Pause,
    SecondFactorError,
    StepgateAuth,
    TokenKey,
)
from gateway.client._flow import retry_after, user_of

GW = "http://gw.test"
P = "/.stepgate"
PROBLEM = "urn:stepgate:problem:"
# path prefix -> rule, binding, uses, ttl
RULES = {"/s/": ("settings", "session", None, 300), "/r/": ("reports", "route", 2, 60),
         "/q/": ("transfers", "request", 1, 120), "/both/": ("vault", "route", None, 60)}


def problem(status: int, name: str, title: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"type": PROBLEM + name, "title": title, "status": status,
                                        **extra}, headers=extra.pop("headers", None) or {})


class FakeGateway:
    """Just enough of the wire protocol for a client: tokens are counters, the code is
    123456 (the recovery code for the second factor of /both/ is RC), and knobs make it
    refuse tokens or answer 429."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.sent: list[tuple[str, str, str | None]] = []  # host, path, token, as sent
        self.tokens: dict[str, dict[str, Any]] = {}
        self.challenges: dict[str, dict[str, Any]] = {}
        self.upstream_status = 200
        self.refuse_tokens = False
        self.too_many: list[int] = []     # Retry-After values for the next challenge creations
        self.lock_verify: list[int] = []  # ... and for the next verifies
        self.challenge_uri = f"{P}/challenges"
        self.verify_base = ""
        self.forwarded = 0
        self.factors = ["totp", "recovery"]

    def user(self, request: httpx.Request) -> str:
        value = request.headers.get("authorization", "")
        return base64.b64decode(value[6:]).decode().partition(":")[0] if value else ""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        self.sent.append((request.url.host, request.url.path,
                          request.headers.get("x-stepgate-token")))
        path = request.url.path
        if path == f"{P}/challenges" and request.method == "POST":
            return self.create(request)
        if path.startswith(f"{P}/challenges/") and path.endswith("/verify"):
            return self.verify(request, path.split("/")[3])
        if path.startswith(f"{P}/challenges/"):
            ch = self.challenges[path.split("/")[3]]
            return httpx.Response(200, json={"state": ch["state"],
                                             "attempts_left": ch["attempts_left"]})
        prefix = next((p for p in RULES if path.startswith(p)), None)
        if prefix is None:
            return httpx.Response(200, text="open")
        rule, binding, _uses, _ttl = RULES[prefix]
        user = self.user(request)
        value = request.headers.get("x-stepgate-token")
        detail = None
        if value is not None:
            tok = self.tokens.get(value)
            if self.refuse_tokens or tok is None or tok["rule"] != rule or tok["user"] != user:
                detail = "token is not valid"
            elif tok["uses_left"] is not None and tok["uses_left"] <= 0:
                detail = "token already used"
            else:
                if tok["uses_left"] is not None and self.upstream_status < 400:
                    tok["uses_left"] -= 1
                self.forwarded += 1
                return httpx.Response(self.upstream_status, text=f"upstream {path}")
        factors = self.factors
        extra = {"all_of": True} if rule == "vault" else {}
        return problem(401, "second-factor-required", "Second factor required", detail=detail,
                       rule=rule, factors=factors, binding=binding, ticket=f"{user}|{rule}",
                       challenge_uri=self.challenge_uri, token_header="X-Stepgate-Token", **extra)

    def create(self, request: httpx.Request) -> httpx.Response:
        if self.too_many:
            seconds = self.too_many.pop(0)
            return problem(429, "resend-too-soon", "Code sent recently",
                           detail="a code was sent for this challenge moments ago",
                           retry_after=seconds, headers={"retry-after": str(seconds)})
        body = httpx.Response(200, content=request.content).json()
        user, _, rule = body["ticket"].partition("|")
        done = [c["factor"] for c in self.challenges.values()
                if c["ticket"] == body["ticket"] and c["state"] == "verified"]
        factor = body.get("factor") or ("recovery" if rule == "vault" and "totp" in done
                                        else self.factors[0])
        cid = f"c{len(self.challenges) + 1}"
        self.challenges[cid] = {"ticket": body["ticket"], "factor": factor, "state": "pending",
                                "attempts_left": 5, "rule": rule, "user": user}
        doc = {"challenge_id": cid, "factor": factor, "expires_in": 300, "attempts_left": 5,
               "verify_uri": f"{self.verify_base}{P}/challenges/{cid}/verify"}
        if factor == "sms":
            doc.update(hint="Code sent to +33 •• 89", resend_after=30)
        return httpx.Response(201, json=doc, headers={"location": f"{P}/challenges/{cid}"})

    def verify(self, request: httpx.Request, cid: str) -> httpx.Response:
        ch = self.challenges[cid]
        if self.lock_verify:
            seconds = self.lock_verify.pop(0)
            ch["attempts_left"] -= 1
            return problem(429, "locked", "Too many failed attempts",
                           detail="second-factor attempts for this account are paused",
                           retry_after=seconds, headers={"retry-after": str(seconds)})
        answer = httpx.Response(200, content=request.content).json()
        expected = "RC" if ch["factor"] == "recovery" else "123456"
        if answer.get("code") != expected and answer.get("credential") != "ok":
            ch["attempts_left"] -= 1
            if ch["attempts_left"] <= 0:
                ch["state"] = "failed"
                return problem(410, "challenge-gone", "Challenge no longer usable",
                               detail="too many wrong codes; request a new challenge")
            return problem(403, "wrong-code", "Wrong code", detail="the code is not valid",
                           attempts_left=ch["attempts_left"])
        ch["state"] = "verified"
        rule = ch["rule"]
        if rule == "vault" and ch["factor"] == "totp":
            return httpx.Response(200, json={"status": "verified", "remaining": ["recovery"],
                                             "challenge_uri": f"{P}/challenges"})
        _, binding, uses, ttl = next(v for v in RULES.values() if v[0] == rule)
        value = f"tok-{len(self.tokens) + 1}"
        self.tokens[value] = {"rule": rule, "user": ch["user"], "uses_left": uses}
        return httpx.Response(200, json={"token": value, "token_header": "X-Stepgate-Token",
                                         "expires_in": ttl, "binding": binding, "uses": uses,
                                         "status": "verified"})

    def count(self, method: str, path_start: str) -> int:
        return sum(1 for r in self.seen if r.method == method and r.url.path.startswith(path_start))


class Asked:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers) or ["123456"] * 20
        self.prompts: list[CodePrompt] = []

    def __call__(self, factor: str, info: CodePrompt) -> Any:
        self.prompts.append(info)
        answer = self.answers.pop(0)
        return answer() if callable(answer) else answer


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


def client(fake: FakeGateway, auth: httpx.Auth | None = None, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=GW, transport=httpx.MockTransport(fake), auth=auth, **kw)


def test_session_token_serves_later_requests(fake: FakeGateway) -> None:
    asked = Asked()
    auth = StepgateAuth(asked, basic=("alice", "pw"))
    with client(fake, auth) as c:
        assert [c.get("/s/a").status_code for _ in range(5)] == [200] * 5
        assert c.get("/s/b").status_code == 200      # a new path: one 401, the kept token
        assert c.get("/open").text == "open"
    assert len(asked.prompts) == 1
    assert fake.count("POST", f"{P}/challenges") == 2  # one challenge, one verify
    # the kept token goes with the request at once: one 401 per path, not per request
    assert [(p, t) for _, p, t in fake.sent if p.startswith("/s/")] == [
        ("/s/a", None), ("/s/a", "tok-1"), *[("/s/a", "tok-1")] * 4, ("/s/b", None), ("/s/b", "tok-1")]
    assert fake.forwarded == 6
    kept = auth.cache.get(TokenKey(GW, "alice", "settings"))
    assert kept is not None and kept.binding == "session"


def test_expired_token_is_not_sent(fake: FakeGateway) -> None:
    now = [1000.0]
    asked = Asked()
    auth = StepgateAuth(asked, basic=("alice", "pw"), clock=lambda: now[0])
    with client(fake, auth) as c:
        c.get("/s/a")
        now[0] += 299.5  # within the expiry margin of the 300 s token
        r = c.get("/s/a")
    assert r.status_code == 200 and len(asked.prompts) == 2
    assert [t for _, p, t in fake.sent if p == "/s/a"] == [None, "tok-1", None, "tok-2"]


def test_route_uses_are_counted_and_failures_give_them_back(fake: FakeGateway) -> None:
    asked = Asked()
    auth = StepgateAuth(asked, basic=("alice", "pw"))
    key = TokenKey(GW, "alice", "reports")
    with client(fake, auth) as c:
        assert c.get("/r/1").status_code == 200
        kept = auth.cache.get(key)
        assert kept is not None and kept.uses_left == 1
        fake.upstream_status = 500
        assert c.get("/r/1").status_code == 500   # a failure spends nothing
        kept = auth.cache.get(key)
        assert kept is not None and kept.uses_left == 1
        fake.upstream_status = 200
        assert c.get("/r/1").status_code == 200
        assert auth.cache.get(key) is None          # used up: dropped, not sent again
        r = c.get("/r/1")
    assert r.status_code == 200 and len(asked.prompts) == 2
    assert r.history[0].json()["detail"] is None  # the spent token was not offered
    assert [t for _, p, t in fake.sent if p == "/r/1"] == [None, "tok-1", "tok-1", "tok-1",
                                                           None, "tok-2"]


def test_request_bound_tokens_are_not_kept(fake: FakeGateway) -> None:
    asked = Asked()
    auth = StepgateAuth(asked, basic=("alice", "pw"))
    with client(fake, auth) as c:
        assert c.post("/q/1", json={"a": 1}).status_code == 200
        assert c.post("/q/1", json={"a": 1}).status_code == 200
    assert len(asked.prompts) == 2
    assert auth.cache.get(TokenKey(GW, "alice", "transfers")) is None


def test_refused_kept_token_is_dropped_and_the_handshake_runs_once(fake: FakeGateway) -> None:
    asked = Asked()
    auth = StepgateAuth(asked, basic=("alice", "pw"))
    with client(fake, auth) as c:
        c.get("/s/a")
        fake.tokens.clear()  # the gateway forgot every token (e.g. revoked)
        r = c.get("/s/a")
        assert r.status_code == 200 and len(asked.prompts) == 2
        assert [h.status_code for h in r.history] == [401, 201, 200]
        fake.refuse_tokens = True  # now even the new token is refused
        with pytest.raises(SecondFactorError) as err:
            c.get("/s/a")
    assert len(asked.prompts) == 3  # one handshake after the refusal, not a loop
    assert str(err.value) == ("the gateway refused the token it issued for rule 'settings': "
                              "Second factor required (401): token is not valid")
    assert auth.cache.get(TokenKey(GW, "alice", "settings")) is None


def test_a_pluggable_cache_is_shared(fake: FakeGateway) -> None:
    class DictCache:
        def __init__(self) -> None:
            self.data: dict[TokenKey, CachedToken] = {}
            self.calls: list[str] = []

        def get(self, key: TokenKey) -> CachedToken | None:
            self.calls.append("get")
            return self.data.get(key)

        def put(self, key: TokenKey, token: CachedToken) -> None:
            self.calls.append("put")
            self.data[key] = token

        def drop(self, key: TokenKey) -> None:
            self.calls.append("drop")
            self.data.pop(key, None)

    cache = DictCache()
    first, second = Asked(), Asked()
    with client(fake, StepgateAuth(first, basic=("alice", "pw"), cache=cache)) as c:
        c.get("/s/a")
    assert list(cache.data) == [TokenKey(GW, "alice", "settings")]
    # another process, say, with the same cache: the 401 names the rule, the token is there
    with client(fake, StepgateAuth(second, basic=("alice", "pw"), cache=cache)) as c:
        r = c.get("/s/a")
    assert r.status_code == 200 and len(second.prompts) == 0
    assert "drop" not in cache.calls


def test_tokens_never_cross_users_or_origins(fake: FakeGateway) -> None:
    asked = Asked()
    auth = StepgateAuth(asked)  # credentials per request
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    bob = {"Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()}
    with httpx.Client(transport=httpx.MockTransport(fake), auth=auth) as c:
        c.get(f"{GW}/s/a", headers=alice)
        c.get(f"{GW}/s/a", headers=alice)
        c.get(f"{GW}/s/a", headers=bob)
        c.get("http://other.test/s/a", headers=alice)
    assert len(asked.prompts) == 3
    assert [(h, t) for h, p, t in fake.sent if p == "/s/a"] == [
        ("gw.test", None), ("gw.test", "tok-1"), ("gw.test", "tok-1"),   # alice
        ("gw.test", None), ("gw.test", "tok-2"),                        # bob: his own
        ("other.test", None), ("other.test", "tok-3")]                  # another gateway


def test_user_of_names_basic_users_and_digests_the_rest() -> None:
    def h(value: str) -> httpx.Headers:
        return httpx.Headers({"Authorization": value})
    assert user_of(h("Basic " + base64.b64encode(b"alice:pw:x").decode())) == "alice"
    a, b = user_of(h("Bearer aaa")), user_of(h("Bearer bbb"))
    assert a.startswith("#") and a != b and "aaa" not in a
    assert user_of(httpx.Headers()) == ""


@pytest.mark.parametrize("where", ["challenge_uri", "verify_uri"])
def test_codes_and_credentials_stay_on_the_gateway_origin(fake: FakeGateway, where: str) -> None:
    if where == "challenge_uri":
        fake.challenge_uri = "http://attacker.test/.stepgate/challenges"
    else:
        fake.verify_base = "//attacker.test"
    asked = Asked()
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c, \
            pytest.raises(SecondFactorError, match="points to another origin"):
        c.get("/s/a")
    assert asked.prompts == []
    assert all(r.url.host == "gw.test" for r in fake.seen)


def test_wrong_code_is_asked_again_with_attempts_left(fake: FakeGateway) -> None:
    asked = Asked("1", "2", "123456")
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c:
        assert c.get("/s/a").status_code == 200
    assert [(p.attempt, p.retry, p.attempts_left, p.get("attempts_left")) for p in asked.prompts] \
        == [(1, False, 5, 5), (2, True, 4, 4), (3, True, 3, 3)]
    assert asked.prompts[1].error == "Wrong code: the code is not valid"


def test_exhausted_challenge_raises_with_title_and_detail(fake: FakeGateway) -> None:
    asked = Asked("1", "2", "3", "4", "5")
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c, \
            pytest.raises(SecondFactorError) as err:
        c.get("/s/a")
    assert len(asked.prompts) == 5
    assert err.value.status == 410 and err.value.title == "Challenge no longer usable"
    assert str(err.value) == ("the gateway did not accept the code: Challenge no longer usable "
                              "(410): too many wrong codes; request a new challenge")


def test_a_refused_code_given_again_is_not_sent(fake: FakeGateway) -> None:
    asked = Asked("1", "1")
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c, \
            pytest.raises(SecondFactorError) as err:
        c.get("/s/a")
    assert fake.count("POST", f"{P}/challenges/c1/verify") == 1
    assert err.value.status == 403 and "Wrong code (403)" in str(err.value)


def test_all_of_asks_every_factor_in_turn(fake: FakeGateway) -> None:
    asked = Asked("123456", "RC")
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c:
        assert c.get("/both/x").status_code == 200
    assert [(p.factor, p.step, p.steps) for p in asked.prompts] == [("totp", 1, 2),
                                                                    ("recovery", 2, 2)]
    creates = [httpx.Response(200, content=r.content).json() for r in fake.seen
               if r.url.path == f"{P}/challenges"]
    assert [c.get("factor") for c in creates] == [None, "recovery"]


def test_a_mapping_answer_is_the_verify_body(fake: FakeGateway) -> None:
    with client(fake, StepgateAuth(Asked({"credential": "ok"}), basic=("alice", "pw"))) as c:
        assert c.get("/s/a").status_code == 200
    verify = [r for r in fake.seen if r.url.path.endswith("/verify")][0]
    assert httpx.Response(200, content=verify.content).json() == {"credential": "ok"}


def test_resend_asks_for_a_new_challenge_with_the_same_ticket(fake: FakeGateway,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    fake.factors = ["sms", "totp"]

    def resend_too_soon() -> Any:
        fake.too_many.append(2)  # the gateway: wait 2 s before sending again
        return RESEND
    asked = Asked(resend_too_soon, "123456")
    pauses: list[Pause] = []
    auth = StepgateAuth(asked, basic=("alice", "pw"), factor=["webauthn", "sms"],
                        on_wait=pauses.append)
    with client(fake, auth) as c:
        assert c.get("/s/a").status_code == 200
    first, second = asked.prompts
    assert first.delivered and first.hint == "Code sent to +33 •• 89" and first.resent == 0
    assert second.resent == 1 and second.attempt == 1 and second["challenge_id"] == "c2"
    creates = [httpx.Response(200, content=r.content).json() for r in fake.seen
               if r.url.path == f"{P}/challenges"]
    assert creates == [{"ticket": "alice|settings", "factor": "sms"}] * 3
    assert slept == [2.0] and [p.seconds for p in pauses] == [2.0]
    assert str(pauses[0]) == ("Code sent recently: a code was sent for this challenge moments "
                              "ago; waiting 2 s before trying again")


def test_waits_beyond_max_wait_raise(fake: FakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    fake.too_many = [3, 3, 3]
    auth = StepgateAuth(Asked(), basic=("alice", "pw"), max_wait=7, on_wait=lambda p: None)
    with client(fake, auth) as c, pytest.raises(SecondFactorError) as err:
        c.get("/s/a")
    assert slept == [3.0, 3.0]  # a third wait would pass max_wait in total
    assert "Code sent recently (429): a code was sent for this challenge moments ago" in str(err.value)
    assert "would exceed max_wait 7 s" in str(err.value)


def test_lock_at_verify_is_waited_and_attempts_read_back(fake: FakeGateway,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    fake.lock_verify = [1]
    asked = Asked("123456", "123456")
    with caplog.at_level(logging.WARNING, "stepgate.client"), \
            client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c:
        assert c.get("/s/a").status_code == 200
    assert [(p.retry, p.attempts_left) for p in asked.prompts] == [(False, 5), (True, 4)]
    assert asked.prompts[1].error == ("Too many failed attempts: second-factor attempts for this "
                                      "account are paused")
    assert [r.getMessage() for r in caplog.records] == [
        "Too many failed attempts: second-factor attempts for this account are paused; "
        "waiting 1 s before trying again"]


def test_streamed_body_meets_a_request_bound_rule(fake: FakeGateway) -> None:
    asked = Asked()
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c, \
            pytest.raises(BodyNotReplayable, match="binds its token to the exact request"):
        c.post("/q/1", content=iter([b"a", b"b"]))
    assert asked.prompts == []


def test_streamed_body_goes_with_a_known_token(fake: FakeGateway) -> None:
    asked = Asked()
    with client(fake, StepgateAuth(asked, basic=("alice", "pw"))) as c:
        with pytest.raises(BodyNotReplayable) as err:
            c.put("/s/up", content=iter([b"a", b"b"]))
        assert err.value.token_kept and len(asked.prompts) == 1
        r = c.put("/s/up", content=iter([b"a", b"b"]))
    assert r.status_code == 200 and r.history == []
    assert r.request.headers["x-stepgate-token"] == "tok-1"


def test_sync_client_refuses_an_async_callback(fake: FakeGateway) -> None:
    async def code(factor: str, info: CodePrompt) -> str:
        return "123456"
    with client(fake, StepgateAuth(code, basic=("alice", "pw"))) as c, \
            pytest.raises(TypeError, match="AsyncClient"):
        c.get("/s/a")


def test_async_client_awaits_callbacks_and_hooks(fake: FakeGateway) -> None:
    fake.lock_verify = [0]
    pauses: list[Pause] = []

    async def code(factor: str, info: CodePrompt) -> str:
        await asyncio.sleep(0)
        return "123456"

    async def on_wait(pause: Pause) -> None:
        pauses.append(pause)

    async def main() -> list[int]:
        auth = StepgateAuth(code, basic=("alice", "pw"), on_wait=on_wait)
        async with httpx.AsyncClient(base_url=GW, transport=httpx.MockTransport(fake),
                                     auth=auth) as c:
            return [(await c.get("/s/a")).status_code for _ in range(3)]
    assert asyncio.run(main()) == [200, 200, 200]
    assert [p.seconds for p in pauses] == [0.0]
    assert fake.forwarded == 3


def test_no_answer_stops_the_handshake(fake: FakeGateway) -> None:
    with client(fake, StepgateAuth(Asked(""), basic=("alice", "pw"))) as c, \
            pytest.raises(SecondFactorError, match="no answer was given for the totp challenge"):
        c.get("/s/a")


def test_refusal_to_start_a_challenge_names_the_problem(fake: FakeGateway) -> None:
    def locked(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{P}/challenges":
            return problem(429, "locked", "Too many failed attempts",
                           detail="second-factor attempts for this account are locked until an "
                           "administrator unlocks it")
        return fake(request)
    with httpx.Client(base_url=GW, transport=httpx.MockTransport(locked),
                      auth=StepgateAuth(Asked(), basic=("alice", "pw"))) as c, \
            pytest.raises(SecondFactorError) as err:
        c.get("/s/a")
    assert str(err.value) == ("the gateway refused to start a challenge: Too many failed "
                              "attempts (429): second-factor attempts for this account are "
                              "locked until an administrator unlocks it")


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after(httpx.Response(429, headers={"retry-after": "7"})) == 7.0
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < (retry_after(httpx.Response(429, headers={"retry-after": later})) or 0) <= 60
    assert retry_after(httpx.Response(429)) is None
    assert retry_after(httpx.Response(429, headers={"retry-after": "soon"})) is None


def test_the_first_clients_callbacks_still_work(fake: FakeGateway) -> None:
    seen: list[Any] = []

    def old_style(factor: str, info: dict[str, Any]) -> str:
        seen.append((factor, info["challenge_id"], info["verify_uri"], dict(info)["factor"]))
        return "123456"
    with client(fake, StepgateAuth(old_style, basic=("alice", "pw"), factor="totp")) as c:  # type: ignore[arg-type]
        assert c.get("/s/a").status_code == 200
    assert seen == [("totp", "c1", f"{P}/challenges/c1/verify", "totp")]


def test_memory_cache_is_the_default(fake: FakeGateway) -> None:
    assert isinstance(StepgateAuth(Asked()).cache, MemoryTokenCache)


def test_multipart_uploads_are_sent_again_whole(fake: FakeGateway, tmp_path: Any) -> None:
    bodies: list[bytes] = []

    class Streaming(httpx.BaseTransport):
        """Reads the body off the stream as a network transport does (MockTransport would
        buffer it first)."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/q/upload":
                bodies.append(b"".join(request.stream))  # type: ignore[union-attr]
            return fake(request)
    f = tmp_path / "report.csv"
    f.write_bytes(b"a,b\n1,2\n" * 1000)
    with httpx.Client(base_url=GW, transport=Streaming(),
                      auth=StepgateAuth(Asked(), basic=("alice", "pw"))) as c, f.open("rb") as fh:
        r = c.post("/q/upload", files={"report": fh})
    assert r.status_code == 200
    first, again = bodies
    assert first == again and first.count(b"1,2") == 1000


class BehindNginx(FakeGateway):
    """The fake gateway seen through nginx auth_request: a 401's body is nginx's HTML page
    and only the first WWW-Authenticate field (the SecondFactor challenge) is left."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        resp = super().__call__(request)
        if resp.status_code != 401:
            return resp
        doc = resp.json()
        challenge = (f'SecondFactor realm="api", rule="{doc["rule"]}", '
                     f'factors="{" ".join(doc["factors"])}", '
                     f'challenge_uri="{doc["challenge_uri"]}", ticket="{doc["ticket"]}", '
                     f'binding="{doc["binding"]}"')
        return httpx.Response(401, headers={"content-type": "text/html",
                                            "www-authenticate": challenge},
                              text="<html><body><h1>401 Authorization Required</h1></body></html>")


def test_a_challenge_is_read_from_the_header_when_the_body_was_replaced() -> None:
    fake = BehindNginx()
    asked = Asked()
    auth = StepgateAuth(asked, basic=("alice", "pw"))
    with client(fake, auth) as c:
        assert [c.get("/s/a").status_code for _ in range(3)] == [200] * 3
        assert c.post("/q/x", json={"a": 1}).status_code == 200
    assert [p.rule for p in asked.prompts] == ["settings", "transfers"]
    assert auth.cache.get(TokenKey(GW, "alice", "settings")) is not None  # binding="session"
    assert fake.forwarded == 4


def test_second_factor_params_parse_quoted_and_token_values() -> None:
    from gateway.client._flow import second_factor_params
    assert second_factor_params('SecondFactor realm="a \\"b\\"", rule=x, factors="totp sms", '
                                'ticket="t.1-_"') == {"realm": 'a "b"', "rule": "x",
                                                      "factors": "totp sms", "ticket": "t.1-_"}
    assert second_factor_params('Basic realm="x"') is None


def test_a_401_without_a_second_factor_challenge_is_returned_as_it_is(fake: FakeGateway) -> None:
    def basic_only(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="x"'}, text="no")
    asked = Asked()
    with httpx.Client(base_url=GW, transport=httpx.MockTransport(basic_only),
                      auth=StepgateAuth(asked, basic=("alice", "pw"))) as c:
        assert c.get("/s/a").status_code == 401
    assert asked.prompts == []
