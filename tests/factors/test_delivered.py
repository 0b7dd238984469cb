"""Delivered codes: addresses, masking, code format and binding."""

from __future__ import annotations

import pytest

from gateway.factors.delivered import code_hash, mask, new_code, valid_address
from gateway.keys import KeyRing, generate_data_key, generate_signing_key


@pytest.mark.parametrize("kind,address,ok", [
    ("e164", "+33612345678", True), ("e164", "0612345678", False), ("e164", "+0612345678", False),
    ("e164", "+33 6 12", False), ("e164", "+336123456789012345", False),
    ("email", "alice@example.org", True), ("email", "a.b+tag@sub.example.co", True),
    ("email", "no-at-sign", False), ("email", "a@b", False), ("email", "a@b.c\nBcc: x@y.z", False),
    ("email", "a b@example.org", False), ("any", "pager-7", True), ("any", "x\r\ny", False),
    ("any", "", False),
])
def test_addresses(kind: str, address: str, ok: bool) -> None:
    assert valid_address(kind, address) is ok


@pytest.mark.parametrize("address,masked", [
    ("+33612345678", "+33 ••••••• 78"),
    ("alice@example.org", "a•••@example.org"),
    ("pager-7", "•••-7"),
    ("abc", "•••"),
])
def test_mask(address: str, masked: str) -> None:
    assert mask(address) == masked


def test_codes_are_digits_and_bound_to_their_challenge() -> None:
    for digits in (6, 7, 8):
        code = new_code(digits)
        assert len(code) == digits and code.isdigit()
    ring = KeyRing([generate_signing_key()], [generate_data_key()])
    assert code_hash(ring, "A", "123456") != code_hash(ring, "B", "123456")
    other = KeyRing([generate_signing_key()], [generate_data_key()])
    assert code_hash(ring, "A", "123456") != code_hash(other, "A", "123456")
    assert len({new_code(6) for _ in range(200)}) > 150  # not a constant
