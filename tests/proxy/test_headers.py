"""Header hygiene on the way up and down (docs/configuration.md), table-driven."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.proxy import HeaderPolicy

OWN = ["X-Stepgate-Token", "X-Stepgate-User", "X-Stepgate-Rule", "X-Stepgate-Factor",
       "X-Stepgate-Verified-At"]
TRUST = [ipaddress.ip_network("10.0.0.0/8")]


def outbound(headers: list[tuple[bytes, bytes]], client: str = "192.0.2.1",
             extra: list[tuple[str, str]] | None = None) -> list[tuple[bytes, bytes]]:
    """The upstream headers, back in bytes for easy comparison with the input."""
    out = HeaderPolicy(OWN, TRUST).request([(b"host", b"gw.example"), *headers], client=client,
                                           scheme="http", extra=extra or [])
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out]


STRIPPED = [
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"keep-alive"),
    (b"te", b"trailers"),
    (b"trailer", b"x"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"proxy-authorization", b"Basic x"),
    (b"x-stepgate-token", b"forged"),
    (b"x_stepgate_token", b"forged"),
    (b"x-stepgate-user", b"root"),
    (b"x_stepgate_user", b"root"),
    (b"x-stepgate-rule", b"r"),
    (b"x-stepgate-factor", b"totp"),
    (b"x-stepgate-verified-at", b"now"),
    (b"x_stepgate-verified_at", b"now"),
    (b"forwarded", b"for=1.2.3.4"),
    (b"x-real-ip", b"1.2.3.4"),
    (b"expect", b"100-continue"),
]


@pytest.mark.parametrize("name,value", STRIPPED)
def test_stripped(name: bytes, value: bytes) -> None:
    out = outbound([(name, value), (b"accept", b"*/*")])
    assert (name, value) not in out
    assert (b"accept", b"*/*") in out


def test_headers_named_in_connection_are_removed_before_ours_are_added() -> None:
    # A client naming our evidence header in Connection must not make us drop our own copy.
    out = outbound([(b"connection", b"x-secret, X-Stepgate-User"), (b"x-secret", b"1")],
                   extra=[("x-stepgate-user", "alice")])
    assert (b"x-secret", b"1") not in out
    assert out.count((b"x-stepgate-user", b"alice")) == 1


def test_forwarding_headers_from_untrusted_clients_are_replaced() -> None:
    out = dict(outbound([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-proto", b"https"),
                         (b"x-forwarded-host", b"evil")]))
    assert out[b"x-forwarded-for"] == b"192.0.2.1"
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"gw.example"
    assert out[b"via"] == b"1.1 stepgate"


def test_host_is_replaced_by_the_upstreams_and_reported_as_forwarded() -> None:
    out = outbound([(b"x-other", b"1")])
    assert not any(k == b"host" for k, _ in out)
    assert (b"x-forwarded-host", b"gw.example") in out


def test_connection_naming_forwarding_headers_voids_them() -> None:
    out = dict(outbound([(b"connection", b"x-forwarded-for, via"), (b"x-forwarded-for", b"1.1.1.1"),
                         (b"via", b"1.0 old")], client="10.1.2.3"))
    assert out[b"x-forwarded-for"] == b"10.1.2.3"
    assert out[b"via"] == b"1.1 stepgate"


def test_forwarding_headers_from_trusted_proxies_are_extended() -> None:
    out = dict(outbound([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-proto", b"https"),
                         (b"x-forwarded-host", b"api.example"), (b"via", b"1.1 lb")],
                        client="10.1.2.3"))
    assert out[b"x-forwarded-for"] == b"1.1.1.1, 10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"api.example"
    assert out[b"via"] == b"1.1 lb, 1.1 stepgate"


def test_passed_through_untouched() -> None:
    keep = [(b"authorization", b"Basic abc"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
            (b"accept-encoding", b"gzip"), (b"content-length", b"3"), (b"content-type", b"x/y")]
    out = outbound(keep)
    assert out[: len(keep)] == keep


def test_response_hop_by_hop_removed_and_duplicates_kept() -> None:
    resp = [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"connection", b"x-hop"),
            (b"x-hop", b"1"), (b"keep-alive", b"t"), (b"transfer-encoding", b"chunked"),
            (b"content-encoding", b"gzip")]
    assert HeaderPolicy.response(resp) == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                                           (b"content-encoding", b"gzip")]


def test_connection_options_alone_drop_nothing_else() -> None:
    resp = [(b"Connection", b"keep-alive"), (b"Content-Type", b"text/plain"), (b"X-A", b"1")]
    assert HeaderPolicy.response(resp) == [(b"content-type", b"text/plain"), (b"x-a", b"1")]
    out = outbound([(b"connection", b"keep-alive, x-a"), (b"x-a", b"1"), (b"x-b", b"2")])
    assert (b"x-b", b"2") in out and (b"x-a", b"1") not in out
