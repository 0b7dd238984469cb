"""A gateway killed (SIGKILL) under load and restarted on the same configuration and SQLite
store loses nothing it acknowledged: every TOTP enrolment whose confirm answered 200 is
still there and its device's codes verify, and no single-use token whose use answered 200
works again or reaches the upstream a second time.

While four threads send allowed and session-token requests, two workers enrol users one
after another and spend request-bound tokens obtained with their recovery codes; the kill
comes once enough of each has been acknowledged, with the workers and the load still
sending. What was in flight at the kill is known only to be unknown: such a token may
work once afterwards (if it never got as far as its reservation) but never reaches the
upstream twice; such an enrolment is not asserted on.
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

from ..conftest import USERS, GatewayProcess, Upstream, basic
from ..totp_ref import Device

pytestmark = pytest.mark.e2e
P = "/.stepgate"
BODY = {"amount": 5}
TIMEOUT = 15.0
LOADERS = 4
# Before the kill: at least this many enrolments confirmed and tokens spent (with 200), and
# this many answers per load thread.
MIN_ENROLLED, MIN_SPENT, MIN_LOAD = 6, 10, 20
TOKENS_PER_USER = 3
RUN = secrets.token_hex(4)  # the upstream is shared: targets of this run only


@dataclass
class Ledger:
    """What the client saw before the kill, written by the threads, read after it."""

    killing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enrolled: dict[str, tuple[Device, list[str]]] = field(default_factory=dict)
    used_recovery: dict[str, str] = field(default_factory=dict)  # a code verify took, per user
    # token -> (user, target): its use answered 200; sent with no answer before the kill;
    # obtained and never sent
    spent: dict[str, tuple[str, str]] = field(default_factory=dict)
    in_flight: dict[str, tuple[str, str]] = field(default_factory=dict)
    unsent: dict[str, tuple[str, str]] = field(default_factory=dict)
    load_ok: list[int] = field(default_factory=lambda: [0] * LOADERS)
    unexpected: list[str] = field(default_factory=list)  # anything wrong before the kill

    def wrong(self, what: str) -> None:
        if not self.killing.is_set():
            with self.lock:
                self.unexpected.append(what)

    def enough(self) -> bool:
        """Enough acknowledged to kill (or something went wrong already)."""
        with self.lock:
            return bool(self.unexpected) or (
                len(self.enrolled) >= MIN_ENROLLED and len(self.spent) >= MIN_SPENT
                and min(self.load_ok) >= MIN_LOAD)

    def progress(self) -> str:
        with self.lock:
            return (f"enrolled {len(self.enrolled)}, spent {len(self.spent)}, load "
                    f"{self.load_ok}, unexpected {self.unexpected}")


def target(user: str, n: int) -> str:
    return f"/accounts/crash-{RUN}-{user}-{n}/transfers"


def with_token(user: str, token: str) -> dict[str, str]:
    return {**basic(user), "X-Stepgate-Token": token}


def obtain(c: httpx.Client, method: str, path: str, code: str, factor: str,
           body: Any = None) -> str:
    """The whole handshake for one request: the 401's ticket, a challenge, the code."""
    r = c.request(method, path, json=body)
    assert r.status_code == 401, (path, r.status_code, r.text)
    ch = c.post(f"{P}/challenges", json={"ticket": r.json()["ticket"], "factor": factor})
    assert ch.status_code == 201, (path, ch.status_code, ch.text)
    v = c.post(ch.json()["verify_uri"], json={"code": code})
    assert v.status_code == 200, (path, v.status_code, v.text)
    return str(v.json()["token"])


def enrol(c: httpx.Client) -> tuple[Device, list[str]]:
    r = c.post(f"{P}/factors/totp", json={"label": "phone"})
    assert r.status_code == 201, r.text
    device = Device(r.json()["secret"])
    ok = c.post(f"{P}/factors/{r.json()['id']}/confirm", json={"code": device.code()})
    assert ok.status_code == 200, ok.text
    return device, list(ok.json()["recovery_codes"])


def loader(gw: GatewayProcess, ledger: Ledger, i: int, session: str) -> None:
    """Allowed and session-token requests, one after the other, until the kill."""
    with httpx.Client(base_url=gw.url, timeout=TIMEOUT) as c:
        while not ledger.killing.is_set():
            for path, headers in ((f"/public/crash-{RUN}-load", {}),
                                  (f"/settings/crash-{RUN}-load", with_token("alice", session))):
                try:
                    r = c.get(path, headers=headers)
                except httpx.TransportError as exc:
                    ledger.wrong(f"load {path}: {exc!r}")
                    return
                if r.status_code != 200:
                    ledger.wrong(f"load {path}: {r.status_code} {r.text[:200]}")
                    return
                with ledger.lock:
                    ledger.load_ok[i] += 1


def worker(gw: GatewayProcess, ledger: Ledger, users: list[str]) -> None:
    """Per user: enrol TOTP, then obtain tokens with recovery codes and spend them (the
    last one is kept unsent), until the users run out or the gateway is killed."""
    for user in users:
        if ledger.killing.is_set():
            return
        with httpx.Client(base_url=gw.url, headers=basic(user), timeout=TIMEOUT) as c:
            step = "enrol"
            try:
                device, codes = enrol(c)
                with ledger.lock:
                    ledger.enrolled[user] = (device, codes)
                for n in range(TOKENS_PER_USER):
                    step = f"token {n}"
                    path = target(user, n)
                    code = codes.pop()
                    token = obtain(c, "POST", path, code, "recovery", BODY)
                    with ledger.lock:
                        ledger.used_recovery.setdefault(user, code)
                        if n == TOKENS_PER_USER - 1:
                            ledger.unsent[token] = (user, path)
                            continue
                        ledger.in_flight[token] = (user, path)
                    r = c.post(path, json=BODY, headers={"X-Stepgate-Token": token})
                    assert r.status_code == 200, (path, r.status_code, r.text)
                    with ledger.lock:
                        ledger.spent[token] = ledger.in_flight.pop(token)
            except httpx.TransportError as exc:
                ledger.wrong(f"{user} {step}: {exc!r}")
                return
            except AssertionError as exc:  # an answer, but the wrong one
                ledger.wrong(f"{user} {step}: {exc}")
                return


def wait_for(ok: Callable[[], bool], what: Callable[[], str], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


@pytest.fixture
def gw(make_gateway: Callable[..., GatewayProcess]) -> Iterator[GatewayProcess]:
    gateway = make_gateway()
    yield gateway
    if gateway.proc is not None:
        gateway.stop()


def count(upstream: Upstream, path: str) -> int:
    return sum(1 for r in upstream.records() if r["target"] == path)


def test_sigkill_under_load_loses_nothing_acknowledged(gw: GatewayProcess,
                                                       upstream: Upstream) -> None:
    ledger = Ledger()
    # The load's user and its session token, before the load starts.
    with httpx.Client(base_url=gw.url, headers=basic("alice"), timeout=TIMEOUT) as c:
        _, alice_codes = enrol(c)
        session = obtain(c, "GET", f"/settings/crash-{RUN}-load", alice_codes[0], "recovery")
    pool = [u for u in USERS if u != "alice"][:12]
    threads = [threading.Thread(target=loader, args=(gw, ledger, i, session), daemon=True)
               for i in range(LOADERS)]
    threads += [threading.Thread(target=worker, args=(gw, ledger, pool[k::2]), daemon=True)
                for k in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(ledger.enough, lambda: f"not enough acknowledged in time: {ledger.progress()}")
        assert not ledger.unexpected, ledger.unexpected
        # SIGKILL with the workers and the load still sending.
        ledger.killing.set()
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait(10)
    finally:
        ledger.killing.set()
        for t in threads:
            t.join(TIMEOUT + 5)
    assert not ledger.unexpected, ledger.unexpected
    with ledger.lock:  # the threads are done; copies, to read at leisure
        enrolled = dict(ledger.enrolled)
        spent, in_flight, unsent = dict(ledger.spent), dict(ledger.in_flight), dict(ledger.unsent)
        used_recovery = dict(ledger.used_recovery)
    assert len(enrolled) >= MIN_ENROLLED and len(spent) >= MIN_SPENT
    before = {path: count(upstream, path) for _, path in (*spent.values(), *in_flight.values(),
                                                          *unsent.values())}
    for _, path in spent.values():
        assert before[path] == 1, path
    for _, path in unsent.values():
        assert before[path] == 0, path

    restarted = GatewayProcess(gw.config, gw.port, gw.env).start()
    try:
        with httpx.Client(base_url=restarted.url, timeout=TIMEOUT) as c:
            # Every confirmed enrolment: challenged (not "not enrolled"), TOTP active, and a
            # fresh code from the device verifies.
            for user, (device, _codes) in enrolled.items():
                listed = c.get(f"{P}/factors", headers=basic(user)).json()["factors"]
                assert ("totp", "active") in [(f["type"], f["status"]) for f in listed], user
                path = f"/settings/crash-{RUN}-{user}"
                r = c.get(path, headers=basic(user))
                assert r.status_code == 401, (user, r.status_code, r.text)
                assert "totp" in r.json()["factors"]
                ch = c.post(f"{P}/challenges", json={"ticket": r.json()["ticket"],
                                                     "factor": "totp"}, headers=basic(user))
                assert ch.status_code == 201, ch.text
                v = c.post(ch.json()["verify_uri"], json={"code": device.code()},
                           headers=basic(user))
                assert v.status_code == 200, (user, v.status_code, v.text)
                ok = c.get(path, headers=with_token(user, v.json()["token"]))
                assert ok.status_code == 200, ok.text
            # A recovery code accepted before the kill stays used (one user is enough).
            user, code = next(iter(used_recovery.items()))
            r = c.get(f"/settings/crash-{RUN}-{user}", headers=basic(user))
            ch = c.post(f"{P}/challenges", json={"ticket": r.json()["ticket"],
                                                 "factor": "recovery"}, headers=basic(user))
            assert ch.status_code == 201, ch.text
            again = c.post(ch.json()["verify_uri"], json={"code": code}, headers=basic(user))
            assert again.status_code == 403, (user, again.status_code, again.text)
            # Spent before the kill: refused as used, never forwarded again (twice over).
            for token, (user, path) in spent.items():
                for _ in range(2):
                    r = c.post(path, json=BODY, headers=with_token(user, token))
                    assert r.status_code == 401, (path, r.status_code, r.text)
                    assert r.json()["detail"] == "token already used", r.text
            # In flight at the kill: at most one delivery, whatever the order of events was.
            for token, (user, path) in in_flight.items():
                answers = [c.post(path, json=BODY, headers=with_token(user, token)).status_code
                           for _ in range(2)]
                assert answers[1] in (401, 409), (path, answers)
                assert answers[0] in ((200, 401, 409) if before[path] == 0 else (401, 409)), \
                    (path, before[path], answers)
            # Obtained and never sent: good once after the restart, then used.
            for token, (user, path) in unsent.items():
                first = c.post(path, json=BODY, headers=with_token(user, token))
                assert first.status_code == 200, (path, first.status_code, first.text)
                second = c.post(path, json=BODY, headers=with_token(user, token))
                assert second.status_code == 401, (path, second.status_code, second.text)
        for _, path in spent.values():
            assert count(upstream, path) == 1, path
        for _, path in in_flight.values():
            assert count(upstream, path) <= 1, path
        for _, path in unsent.values():
            assert count(upstream, path) == 1, path
    finally:
        restarted.stop()
