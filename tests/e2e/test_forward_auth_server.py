"""The server's own answer to forward-auth asks it knows without waiting (a remembered allow,
a checked session token): written by the protocol without an ASGI cycle, it must keep
HTTP/1.1's rules exactly as the ASGI path does — keep-alive, Connection: close, HTTP/1.0,
pipelined asks answered in order, a fragment never skipping the canonicaliser."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ..conftest import GatewayProcess

pytestmark = pytest.mark.e2e
P = "/.stepgate"


@pytest.fixture(scope="module")
def gw(make_gateway: Any) -> GatewayProcess:
    return make_gateway(forward_auth={"trusted_proxies": ["127.0.0.1/32"]})


def ask(uri: str, extra: str = "", version: str = "1.1") -> bytes:
    return (f"GET {P}/auth/nginx HTTP/{version}\r\nHost: api.test\r\nX-Original-Method: GET\r\n"
            f"X-Original-URI: {uri}\r\n{extra}\r\n").encode()


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` responses from one connection, framed by their Content-Length."""
    data = b""
    out = []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            data += sock.recv(65536)
        out.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_asks_on_one_connection(gw: GatewayProcess) -> None:
    seen = []
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        for _ in range(3):  # the first is decided by the ASGI path, the others remembered
            s.sendall(ask("/public/keep"))
            [(status, headers, body)] = read_responses(s, 1)
            assert status == 200 and body == b""
            assert headers["content-length"] == "0"
            assert headers["x-stepgate-user"] == "" and headers["x-stepgate-rule"] == ""
            assert "x-stepgate-factor" in headers and "x-stepgate-verified-at" in headers
            assert "connection" not in headers
            seen.append(sorted(headers))
    assert seen[0] == seen[1] == seen[2]  # the server's answer has the ASGI path's fields


def test_connection_close_and_http10_end_the_connection(gw: GatewayProcess) -> None:
    for request in (ask("/public/x", "Connection: close\r\n"), ask("/public/x", version="1.0")):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(ask("/public/x"))  # remembered from here on
            read_responses(s, 1)
            s.sendall(request)
            [(status, headers, _)] = read_responses(s, 1)
            assert status == 200 and headers["connection"] == "close"
            assert closed(s)


def test_pipelined_asks_are_answered_in_order(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(ask("/public/x"))
        read_responses(s, 1)
        s.sendall(ask("/public/x") + ask("/admin/x") + ask("/public/y") + ask("/public/x"))
        statuses = [status for status, _, _ in read_responses(s, 4)]
    assert statuses == [200, 403, 200, 200]


def test_a_fragment_on_the_ask_itself_is_judged_by_the_asgi_path(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(ask("/public/x"))
        read_responses(s, 1)
        s.sendall(f"GET {P}/auth/nginx#x HTTP/1.1\r\nHost: api.test\r\nX-Original-Method: GET"
                  "\r\nX-Original-URI: /public/x\r\n\r\n".encode())
        [(status, _, _)] = read_responses(s, 1)
    assert status == 400  # the canonicaliser refuses the fragment, as for any target


def test_remembered_allows_are_audited_like_any_other(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        for _ in range(3):
            s.sendall(ask("/public/audited"))
            read_responses(s, 1)
    import time
    time.sleep(1.5)  # the audit stream is flushed every second
    lines = [line for line in gw.audit.splitlines() if '"/public/audited"' in line]
    assert len(lines) == 3 and all('"event":"allowed"' in line for line in lines)
