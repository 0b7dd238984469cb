"""Tickets, tokens, key rotation, TOTP against an independent RFC 6238 reference, sealing."""

from __future__ import annotations

import pytest

from gateway.config.rules import Requirement, Rule
from gateway.decision.tokens import Bound, Signer, token_fits
from gateway.factors.recovery import new_codes, normalise
from gateway.factors.totp import matching_step, new_secret, otpauth_uri
from gateway.keys import KeyError_, KeyRing, generate_data_key, generate_signing_key

from ..totp_ref import hotp

K1, K2 = generate_signing_key(), generate_signing_key()


def rule(binding: str = "request", factors: tuple[str, ...] = ("totp",), all_of: bool = False,
         scope: str = "r", max_age: float | None = None, name: str = "r") -> Rule:
    return Rule(name=name, index=0, source="x", action="require", methods=None, paths=(),
                path_regex=None, hosts=(), query=(), headers=(), json=(),
                require=Requirement(factors, all_of, binding, 120, 1, scope, max_age, "deny",  # type: ignore[arg-type]
                                    "secondfactor", "a"))


def mint(signer: Signer, r: Rule, bound: Bound | None, factors=("totp",), user="alice", now=1000.0):
    t = signer.read_ticket(signer.ticket(user=user, rule=r, binding=r.require.binding,
                                         bound=bound, now=now, ttl=600), now)
    assert t is not None
    tok = signer.token(ticket=t, scope=r.require.scope, factors=factors, verified_at=now,
                       now=now, ttl=120, uses=1, generation=3)
    return signer.read_token(signer.dump_token(tok), now)


def test_ticket_and_token_roundtrip_and_salts() -> None:
    s = Signer([K1])
    ticket = s.ticket(user="alice", rule="r", binding="route", bound=None, now=0, ttl=60)
    assert s.read_ticket(ticket, 10) is not None
    assert s.read_ticket(ticket, 61) is None  # expired
    assert s.read_token(ticket, 10) is None  # a ticket is not a token (distinct salts)
    # flip a character well inside the signature (the last one partly encodes padding bits)
    c = "A" if ticket[-10] != "A" else "B"
    assert s.read_ticket(ticket[:-10] + c + ticket[-9:], 10) is None


def test_key_rotation() -> None:
    old = Signer([K1])
    ticket = old.ticket(user="a", rule="r", binding="route", bound=None, now=0, ttl=60)
    rotated = Signer([K2, K1])
    assert rotated.read_ticket(ticket, 1) is not None
    new_ticket = rotated.ticket(user="a", rule="r", binding="route", bound=None, now=0, ttl=60)
    assert old.read_ticket(new_ticket, 1) is None  # the first key signs
    assert Signer([K2]).read_ticket(new_ticket, 1) is not None
    assert Signer([K2]).read_ticket(ticket, 1) is None


def test_token_fits_table() -> None:
    s = Signer([K1])
    b = Bound.of("POST", "/a", b"", b'{"x":1}')
    r = rule()
    tok = mint(s, r, b)
    assert token_fits(tok, r, "alice", b, 1000) is None
    assert token_fits(tok, r, "bob", b, 1000) == "token belongs to another user"
    assert token_fits(tok, r, "alice", Bound.of("POST", "/a", b"", b'{"x":2}'), 1000)
    assert token_fits(tok, r, "alice", Bound.of("PUT", "/a", b"", b'{"x":1}'), 1000)
    assert token_fits(tok, r, "alice", Bound.of("POST", "/b", b"", b'{"x":1}'), 1000)
    assert token_fits(tok, r, "alice", Bound.of("POST", "/a", b"q=1", b'{"x":1}'), 1000)
    assert token_fits(tok, rule(name="other"), "alice", b, 1000) == "token is for another rule"
    assert token_fits(tok, rule(max_age=10), "alice", b, 1011) == "factor verification is too old"
    assert s.read_token(s.dump_token(tok), 1121) is None  # expired
    sess = rule("session", scope="acct", name="one")
    st = mint(s, sess, None)
    assert token_fits(st, rule("session", scope="acct", name="two"), "alice", None, 1000) is None
    assert token_fits(st, rule("session", scope="other"), "alice", None, 1000)
    both = rule("route", factors=("totp", "email"), all_of=True)
    assert token_fits(mint(s, both, None), both, "alice", None, 1000) == "token lacks a required factor"
    assert token_fits(mint(s, both, None, factors=("totp", "email")), both, "alice", None, 1000) is None


def test_binding_covers_what_gives_the_body_its_meaning() -> None:
    body = b'{"x":1}'
    json_ = Bound.of("POST", "/a", b"", body, [(b"content-type", b"application/json")])
    assert json_ == Bound.of("POST", "/a", b"", body, [(b"content-type", b"application/json"),
                                                       (b"accept", b"*/*")])
    others = [
        Bound.of("POST", "/a", b"", body, []),
        Bound.of("POST", "/a", b"", body, [(b"content-type", b"application/x-www-form-urlencoded")]),
        Bound.of("POST", "/a", b"", body, [(b"content-type", b"application/json"),
                                           (b"content-encoding", b"gzip")]),
        Bound.of("POST", "/a", b"", body, [(b"content-type", b"application/json"),
                                           (b"content-type", b"text/plain")]),
    ]
    assert len({json_, *others}) == 5


def test_tokens_name_their_store_instance_and_generation() -> None:
    s = Signer([K1])
    s.instance = "store-a"
    r = rule()
    tok = mint(s, r, None)
    assert tok is not None and tok.generation == 3
    value = s.dump_token(tok)
    ticket = s.ticket(user="alice", rule=r, binding="request", bound=None, now=1000, ttl=60)
    fresh = Signer([K1])
    fresh.instance = "store-b"  # the same keys in front of a new, empty store
    assert fresh.read_token(value, 1000) is None
    assert fresh.read_ticket(ticket, 1000) is None
    assert s.read_token(value, 1000) == tok


# RFC 6238 Appendix B, SHA-1 rows (8 digits there; the last six digits are the 6-digit code).
RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # "12345678901234567890"


@pytest.mark.parametrize("t,expected", [(59, "94287082"), (1111111109, "07081804"),
                                        (1234567890, "89005924"), (2000000000, "69279037")])
def test_reference_matches_rfc_vectors(t: int, expected: str) -> None:
    assert hotp(RFC_SECRET, t // 30, 8) == expected


def test_matching_step_window_and_format() -> None:
    secret = new_secret()
    assert len(secret) == 32  # 160 bits
    now = 1_700_000_000.0
    step = int(now // 30)
    assert matching_step(secret, hotp(secret, step), now) == step
    assert matching_step(secret, hotp(secret, step - 1), now) == step - 1
    assert matching_step(secret, hotp(secret, step + 1), now) == step + 1
    assert matching_step(secret, hotp(secret, step - 2), now) is None
    assert matching_step(secret, hotp(secret, step + 2), now) is None
    for bad in ("12345", "1234567", "12345a", " 123456", "123456\n", "١٢٣٤٥٦", ""):
        assert matching_step(secret, bad, now) is None


def test_otpauth_uri() -> None:
    uri = otpauth_uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "alice", "Example API")
    assert uri.startswith("otpauth://totp/Example%20API:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    assert "issuer=Example%20API" in uri


def test_sealing_binds_user_and_rotates() -> None:
    d1, d2 = generate_data_key(), generate_data_key()
    ring = KeyRing([K1], [d1])
    blob = ring.encrypt(b"SECRET", "totp:alice:f1")
    assert b"SECRET" not in blob.encode()
    assert ring.decrypt(blob, "totp:alice:f1") == b"SECRET"
    with pytest.raises(ValueError):
        ring.decrypt(blob, "totp:mallory:f1")
    rotated = KeyRing([K1], [d2, d1])
    assert rotated.decrypt(blob, "totp:alice:f1") == b"SECRET"
    with pytest.raises(ValueError):
        KeyRing([K1], [d2]).decrypt(blob, "totp:alice:f1")


def test_weak_keys_refused() -> None:
    with pytest.raises(KeyError_):
        KeyRing(["short"], [generate_data_key()])
    with pytest.raises(KeyError_):
        KeyRing([K1], ["not-a-key"])


def test_recovery_codes_shape() -> None:
    codes = new_codes(10)
    assert len(set(codes)) == 10
    for c in codes:
        assert len(c.replace("-", "")) == 16
        assert normalise(c.lower().replace("-", " ")) == c.replace("-", "")
    assert normalise("short") is None
