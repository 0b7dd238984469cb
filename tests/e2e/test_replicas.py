"""Several gateway processes sharing one state (PostgreSQL, with the hot state in Redis),
end to end over real sockets: enrolment, challenges, codes, single-use tokens and lockouts
hold across replicas; while an engine stalls or stops, the requests that need it answer 503
within the store timeout and are never forwarded, and everything recovers without a restart; a Redis restarted without persistence never
reopens a spent token.

Two pairs of gateways: one for the tests that share state without harming it, and one with
a short ``store_timeout`` for the tests that pause, stop and restart the servers. Every test
counts the upstream's records for its own target, so other tests' traffic does not matter.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ..conftest import GatewayProcess, Upstream, basic
from ..servers import postgres, redis
from ..totp_ref import Device, hotp

pytestmark = pytest.mark.e2e
P = "/.stepgate"
UNAVAILABLE = "urn:stepgate:problem:store-unavailable"
FAST = 3.0  # seconds: store_timeout (500 ms) plus a wide margin for a loaded 2-core machine


@dataclass
class Pair:
    a: GatewayProcess
    b: GatewayProcess
    devices: dict[str, Device] = field(default_factory=dict)
    recovery: dict[str, list[str]] = field(default_factory=dict)

    @property
    def both(self) -> tuple[GatewayProcess, GatewayProcess]:
        return self.a, self.b

    def recovery_code(self, user: str) -> str:
        return self.recovery[user].pop()


def start_pair(make_gateway: Callable[..., GatewayProcess], **overrides: Any) -> Pair:
    """Two gateways with one configuration (keys, users, policies) on a new PostgreSQL
    database and a Redis key prefix of their own, started together (they migrate the new
    database at once, under the advisory lock)."""
    settings = {"store": postgres().new_database(), "redis": redis().url(0),
                "redis_prefix": f"replicas-{secrets.token_hex(4)}:", **overrides}
    started: list[GatewayProcess] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            started.append(make_gateway(**settings))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for gw in started:
            gw.stop()
        raise errors[0]
    return Pair(started[0], started[1])


def stop_pair(pair: Pair) -> None:
    for gw in pair.both:
        if gw.proc is not None:
            gw.stop()


@pytest.fixture(scope="module")
def pair(make_gateway: Callable[..., GatewayProcess]) -> Iterator[Pair]:
    p = start_pair(make_gateway, throttle={"lock_after": 4})
    yield p
    stop_pair(p)


@pytest.fixture(scope="module")
def outage(make_gateway: Callable[..., GatewayProcess]) -> Iterator[Pair]:
    """The pair whose servers are paused, stopped and restarted. Its tests sign in with
    recovery codes (``member``), as TOTP hands out one fresh code per 30 s."""
    p = start_pair(make_gateway, store_timeout="500ms")
    yield p
    stop_pair(p)


# ---------------------------------------------------------------- helpers

def enrol(pair: Pair, start: GatewayProcess, confirm: GatewayProcess, user: str) -> Device:
    """TOTP enrolment started on ``start`` and confirmed on ``confirm``."""
    r = httpx.post(f"{start.url}{P}/factors/totp", json={"label": "phone"}, headers=basic(user))
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["status"] == "pending"
    device = Device(doc["secret"])
    ok = httpx.post(f"{confirm.url}{P}/factors/{doc['id']}/confirm",
                    json={"code": device.code()}, headers=basic(user))
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "active"
    pair.devices[user] = device
    pair.recovery[user] = list(ok.json()["recovery_codes"])
    return device


def member(pair: Pair, user: str) -> str:
    """``user``, enrolled (A then B) with ten recovery codes for the handshakes to come."""
    enrol(pair, pair.a, pair.b, user)
    return user


def ticket(gw: GatewayProcess, user: str, method: str, target: str, body: Any = None) -> str:
    r = httpx.request(method, f"{gw.url}{target}", json=body, headers=basic(user))
    assert r.status_code == 401, r.text
    return str(r.json()["ticket"])


def challenge(gw: GatewayProcess, user: str, ticket_: str, factor: str = "totp") -> str:
    """A new challenge on ``gw``; its verify URI."""
    r = httpx.post(f"{gw.url}{P}/challenges", json={"ticket": ticket_, "factor": factor},
                   headers=basic(user))
    assert r.status_code == 201, r.text
    return str(r.json()["verify_uri"])


def verify(gw: GatewayProcess, user: str, verify_uri: str, code: str) -> httpx.Response:
    return httpx.post(f"{gw.url}{verify_uri}", json={"code": code}, headers=basic(user))


def handshake(ask: GatewayProcess, answer: GatewayProcess, user: str, method: str, target: str,
              code: str, body: Any = None, factor: str = "totp") -> str:
    """The 401, the challenge on ``ask``, the code verified on ``answer``: the token."""
    uri = challenge(ask, user, ticket(ask, user, method, target, body), factor)
    v = verify(answer, user, uri, code)
    assert v.status_code == 200, v.text
    return str(v.json()["token"])


def with_token(user: str, token: str) -> dict[str, str]:
    return {**basic(user), "X-Stepgate-Token": token}


def count(upstream: Upstream, target: str) -> int:
    return sum(1 for r in upstream.records() if r["target"] == target)


def timed(method: str, url: str, **kw: Any) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.request(method, url, timeout=15, **kw)
    return r, time.monotonic() - t0


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == UNAVAILABLE


def wrong_code(device: Device) -> str:
    """A code no nearby time step accepts."""
    step = int(time.time() // 30)
    near = {hotp(device.secret, s) for s in range(step - 3, step + 4)}
    return next(c for c in ("000000", "111111", "222222") if c not in near)


def eventually(check: Callable[[], httpx.Response], ok: Callable[[httpx.Response], bool],
               seconds: float = 10.0) -> list[httpx.Response]:
    """Repeat ``check`` until ``ok``; every answer (the last one passed)."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + seconds
    while True:
        answers.append(check())
        if ok(answers[-1]):
            return answers
        assert time.monotonic() < deadline, [(r.status_code, r.text) for r in answers[-3:]]
        time.sleep(0.2)


# ---------------------------------------------------------------- 6. one state, two gateways

def test_enrolment_and_challenges_cross_replicas(pair: Pair, upstream: Upstream) -> None:
    device = enrol(pair, pair.a, pair.b, "alice")  # started on A, confirmed on B
    for gw in pair.both:
        listed = httpx.get(f"{gw.url}{P}/factors", headers=basic("alice")).json()["factors"]
        assert [(f["type"], f["status"]) for f in listed] == [("totp", "active"),
                                                              ("recovery", "active")]
    target = "/settings/replicas-alice"
    # A challenge made on A verifies on B (TOTP), and one made on B on A (a recovery code).
    by_totp = handshake(pair.a, pair.b, "alice", "GET", target, device.code())
    by_recovery = handshake(pair.b, pair.a, "alice", "GET", target, pair.recovery_code("alice"),
                            factor="recovery")
    for token in (by_totp, by_recovery):
        for gw in pair.both:
            r = httpx.get(f"{gw.url}{target}", headers=with_token("alice", token))
            assert r.status_code == 200, r.text
    assert count(upstream, target) == 4


def test_a_totp_code_accepted_on_one_replica_is_refused_on_the_other(pair: Pair) -> None:
    device = enrol(pair, pair.a, pair.a, "bob")
    code = device.code()
    target = "/settings/replicas-bob"
    accepted = verify(pair.a, "bob", challenge(pair.a, "bob", ticket(pair.a, "bob", "GET", target)),
                      code)
    assert accepted.status_code == 200, accepted.text
    replayed = verify(pair.b, "bob", challenge(pair.b, "bob", ticket(pair.b, "bob", "GET", target)),
                      code)
    assert replayed.status_code == 403, replayed.text
    assert replayed.json()["type"] == "urn:stepgate:problem:code-already-used"


def test_a_single_use_token_replayed_across_replicas_reaches_upstream_once(
        pair: Pair, upstream: Upstream) -> None:
    device = enrol(pair, pair.a, pair.b, "carol")
    target, body = "/accounts/7301/transfers", {"amount": 3}
    token = handshake(pair.a, pair.b, "carol", "POST", target, device.code(), body)
    results: list[int] = []
    barrier = threading.Barrier(20)

    def fire(gw: GatewayProcess) -> None:
        barrier.wait()
        r = httpx.post(f"{gw.url}{target}", json=body, headers=with_token("carol", token),
                       timeout=30)
        results.append(r.status_code)
    # Each gateway alone would let one through: only a shared reservation keeps it at one.
    threads = [threading.Thread(target=fire, args=(pair.both[i % 2],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert results.count(200) == 1, results
    assert set(results) <= {200, 401, 409}, results
    assert count(upstream, target) == 1
    for gw in pair.both:  # and once it is spent, neither gateway takes it again
        again = httpx.post(f"{gw.url}{target}", json=body, headers=with_token("carol", token))
        assert again.status_code == 401 and again.json()["detail"] == "token already used"
    assert count(upstream, target) == 1


def test_wrong_codes_split_across_replicas_lock_the_user(pair: Pair) -> None:
    device = enrol(pair, pair.a, pair.a, "dave")
    uri = challenge(pair.a, "dave", ticket(pair.a, "dave", "GET", "/settings/replicas-dave"))
    bad = wrong_code(device)
    # lock_after is 4: two failures on each gateway make four in the shared count.
    statuses = [verify(gw, "dave", uri, bad).status_code
                for gw in (pair.a, pair.b, pair.a, pair.b)]
    assert statuses == [403, 403, 403, 429], statuses
    for gw in pair.both:
        r = httpx.post(f"{gw.url}{P}/challenges", json={"ticket": ticket(gw, "dave", "GET", "/settings/x")},
                       headers=basic("dave"))
        assert r.status_code == 429, r.text
        assert r.json()["type"] == "urn:stepgate:problem:locked"
        assert int(r.headers["retry-after"]) > 0
    right = verify(pair.b, "dave", uri, device.code())  # even the right code, on either
    assert right.status_code == 429, right.text


# ---------------------------------------------------------------- 7. Redis restarted empty

def test_a_redis_restart_never_reopens_a_spent_token(outage: Pair, upstream: Upstream) -> None:
    user = member(outage, "olivia")
    target, body = "/accounts/7401/transfers", {"amount": 7}
    spent = handshake(outage.a, outage.b, user, "POST", target,
                      outage.recovery_code(user), body, factor="recovery")
    assert httpx.post(f"{outage.b.url}{target}", json=body,
                      headers=with_token(user, spent)).status_code == 200
    assert count(upstream, target) == 1
    server = redis()
    try:
        server.stop()
    finally:
        server.start()  # empty: no persistence
    for gw in (outage.a, outage.b, outage.a, outage.b):
        # The first call that meets the new Redis may answer 503 (the loss is noticed);
        # from then on the token is refused: never forwarded either way.
        answers = eventually(lambda: httpx.post(f"{gw.url}{target}", json=body,
                                                headers=with_token(user, spent)),
                             lambda r: r.status_code == 401, seconds=5)
        assert {r.status_code for r in answers} <= {401, 503}, answers
    assert count(upstream, target) == 1
    # A fresh handshake works (once each gateway has noticed the loss, which a token read
    # of a generation makes sure of), across the replicas.
    settle_epoch(outage, user)
    token = handshake(outage.a, outage.b, user, "POST", target,
                      outage.recovery_code(user), body, factor="recovery")
    ok = httpx.post(f"{outage.a.url}{target}", json=body, headers=with_token(user, token))
    assert ok.status_code == 200, ok.text
    assert count(upstream, target) == 2


def settle_epoch(pair: Pair, user: str) -> None:
    """Make each gateway notice a Redis that lost its state: a session token issued now
    reads the generation (whose script checks the epoch), answering 503 at most once."""
    for gw in pair.both:
        def use() -> httpx.Response:
            token = handshake(gw, gw, user, "GET", "/settings/epoch",
                              pair.recovery_code(user), factor="recovery")
            return httpx.get(f"{gw.url}/settings/epoch", headers=with_token(user, token))
        answers = eventually(use, lambda r: r.status_code == 200, seconds=5)
        assert [r.status_code for r in answers[:-1]] in ([], [503], [401]), answers


# ---------------------------------------------------------------- 8. stalled servers

def test_a_paused_redis_answers_503_within_the_timeout(outage: Pair, upstream: Upstream) -> None:
    user = member(outage, "peggy")
    target, body = "/accounts/7501/transfers", {"amount": 8}
    token = handshake(outage.a, outage.a, user, "POST", target,
                      outage.recovery_code(user), body, factor="recovery")
    ticket_b = ticket(outage.b, user, "POST", target, body)
    server = redis()
    server.pause()
    try:
        spend, took = timed("POST", f"{outage.a.url}{target}", json=body,
                            headers=with_token(user, token))
        assert_unavailable(spend)
        assert took < FAST, took
        ch, took = timed("POST", f"{outage.b.url}{P}/challenges",
                         json={"ticket": ticket_b, "factor": "recovery"}, headers=basic(user))
        assert_unavailable(ch)
        assert took < FAST, took
        for gw in outage.both:
            public, took = timed("GET", f"{gw.url}/public/replicas-redis-paused")
            assert public.status_code == 200 and took < FAST, took
    finally:
        server.resume()
    assert count(upstream, target) == 0
    assert count(upstream, "/public/replicas-redis-paused") == 2
    # Redis answers again: a new challenge and a new token work on both, without a restart.
    for gw in outage.both:
        eventually(lambda: httpx.post(f"{gw.url}{P}/challenges",
                                      json={"ticket": ticket(gw, user, "POST", target, body),
                                            "factor": "recovery"}, headers=basic(user)),
                   lambda r: r.status_code == 201)
    token = handshake(outage.b, outage.a, user, "POST", target,
                      outage.recovery_code(user), body, factor="recovery")
    assert httpx.post(f"{outage.b.url}{target}", json=body,
                      headers=with_token(user, token)).status_code == 200
    assert count(upstream, target) == 1


def test_a_paused_postgresql_answers_503_within_the_timeout(outage: Pair,
                                                            upstream: Upstream) -> None:
    user = member(outage, "rupert")
    target = "/accounts/7601/transfers"
    ticket_b = ticket(outage.b, user, "POST", target, {"amount": 1})
    server = postgres()
    server.pause()
    try:
        # Without a token: whether the user is enrolled is read from PostgreSQL.
        protected, took = timed("POST", f"{outage.a.url}{target}", json={"amount": 1},
                                headers=basic(user))
        assert_unavailable(protected)
        assert took < FAST, took
        ch, took = timed("POST", f"{outage.b.url}{P}/challenges",
                         json={"ticket": ticket_b, "factor": "recovery"}, headers=basic(user))
        assert_unavailable(ch)
        assert took < FAST, took
        for gw in outage.both:
            public, took = timed("GET", f"{gw.url}/public/replicas-pg-paused")
            assert public.status_code == 200 and took < FAST, took
    finally:
        server.resume()
    assert count(upstream, target) == 0
    for gw in outage.both:
        eventually(lambda: httpx.post(f"{gw.url}{target}", json={"amount": 1},
                                      headers=basic(user)),
                   lambda r: r.status_code == 401)
    token = handshake(outage.a, outage.b, user, "POST", target,
                      outage.recovery_code(user), {"amount": 1}, factor="recovery")
    assert httpx.post(f"{outage.a.url}{target}", json={"amount": 1},
                      headers=with_token(user, token)).status_code == 200
    assert count(upstream, target) == 1


# ---------------------------------------------------------------- 9. stopped servers

def test_a_stopped_postgresql_fails_closed_and_recovers(outage: Pair, upstream: Upstream) -> None:
    user = member(outage, "sybil")
    target, body = "/accounts/7701/transfers", {"amount": 9}
    session = handshake(outage.a, outage.b, user, "GET", "/settings/replicas-pg",
                        outage.recovery_code(user), factor="recovery")
    ticket_a = ticket(outage.a, user, "POST", target, body)
    uri = challenge(outage.a, user, ticket_a, "recovery")
    code = outage.recovery_code(user)
    server = postgres()
    server.stop()
    try:
        for gw in outage.both:
            assert_unavailable(httpx.post(f"{gw.url}{target}", json=body, headers=basic(user),
                                          timeout=15))
            assert_unavailable(httpx.post(f"{gw.url}{P}/challenges", headers=basic(user),
                                          json={"ticket": ticket_a, "factor": "recovery"},
                                          timeout=15))
            assert_unavailable(httpx.post(f"{gw.url}{uri}", json={"code": code},
                                          headers=basic(user), timeout=15))
            assert_unavailable(httpx.get(f"{gw.url}{P}/factors", headers=basic(user),
                                         timeout=15))
            public = httpx.get(f"{gw.url}/public/replicas-pg-stopped", timeout=15)
            assert public.status_code == 200
            # Everything that decides a valid token (its signature, the user's revocations
            # in Redis) still answers: it is accepted (docs/operations.md).
            held = httpx.get(f"{gw.url}/settings/replicas-pg", headers=with_token(user, session),
                             timeout=15)
            assert held.status_code == 200, held.text
    finally:
        server.start()
    assert count(upstream, target) == 0
    assert count(upstream, "/public/replicas-pg-stopped") == 2
    # Back without a restart: the challenge made before the outage verifies, and the
    # session token issued before it still works on both.
    for gw in outage.both:
        eventually(lambda: httpx.post(f"{gw.url}{target}", json=body,
                                      headers=basic(user)),
                   lambda r: r.status_code == 401)
    v = verify(outage.b, user, uri, code)
    assert v.status_code == 200, v.text
    for gw in outage.both:
        r = httpx.get(f"{gw.url}/settings/replicas-pg", headers=with_token(user, session))
        assert r.status_code == 200, r.text
    assert httpx.post(f"{outage.a.url}{target}", json=body,
                      headers=with_token(user, v.json()["token"])).status_code == 200
    assert count(upstream, target) == 1


def test_a_stopped_redis_fails_closed_and_its_restart_refuses_older_tokens(
        outage: Pair, upstream: Upstream) -> None:
    user = member(outage, "trent")
    target, body = "/accounts/7801/transfers", {"amount": 11}
    session_target = "/settings/replicas-redis"
    session = handshake(outage.a, outage.b, user, "GET", session_target,
                        outage.recovery_code(user), factor="recovery")
    unspent = handshake(outage.b, outage.a, user, "POST", target,
                        outage.recovery_code(user), body, factor="recovery")
    for gw in outage.both:
        assert httpx.get(f"{gw.url}{session_target}",
                         headers=with_token(user, session)).status_code == 200
    ticket_a = ticket(outage.a, user, "POST", target, body)
    before = count(upstream, session_target)
    server = redis()
    server.stop()
    try:
        time.sleep(1.2)  # past the second for which a gateway trusts a generation it read
        for gw in outage.both:
            assert_unavailable(httpx.post(f"{gw.url}{target}", json=body,
                                          headers=with_token(user, unspent), timeout=15))
            assert_unavailable(httpx.get(f"{gw.url}{session_target}",
                                         headers=with_token(user, session), timeout=15))
            assert_unavailable(httpx.post(f"{gw.url}{P}/challenges", headers=basic(user),
                                          json={"ticket": ticket_a, "factor": "recovery"},
                                          timeout=15))
            public = httpx.get(f"{gw.url}/public/replicas-redis-stopped", timeout=15)
            assert public.status_code == 200
    finally:
        server.start()  # empty: no persistence
    assert count(upstream, target) == 0
    assert count(upstream, session_target) == before
    assert count(upstream, "/public/replicas-redis-stopped") == 2
    # Every token issued before the restart is refused from now on (at most one 503 while
    # a gateway notices the loss), the never-spent one and the session token alike.
    for gw in outage.both:
        for check in (lambda: httpx.post(f"{gw.url}{target}", json=body,
                                         headers=with_token(user, unspent)),
                      lambda: httpx.get(f"{gw.url}{session_target}",
                                        headers=with_token(user, session))):
            answers = eventually(check, lambda r: r.status_code == 401, seconds=5)
            assert {r.status_code for r in answers} <= {401, 503}, answers
    assert count(upstream, target) == 0
    assert count(upstream, session_target) == before
    # And a fresh handshake works across the replicas.
    settle_epoch(outage, user)
    fresh = handshake(outage.a, outage.b, user, "GET", session_target,
                      outage.recovery_code(user), factor="recovery")
    for gw in outage.both:
        r = httpx.get(f"{gw.url}{session_target}", headers=with_token(user, fresh))
        assert r.status_code == 200, r.text
