"""End to end over sockets: what the server protocol itself enforces before the app runs.

Trailer fields stay out of the header section (RFC 9110 §6.5.1, RFC 9112 §7.1.2), a
fragment in the request target is refused rather than silently cut off, slow clients
(slowloris) are timed out while sending a head or a body, and one client address cannot
hold an unbounded number of connections.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ..conftest import GatewayProcess, Upstream, basic
from ..rawhttp import RawResponse, request

pytestmark = pytest.mark.e2e

AUTH = basic("alice")["Authorization"]
TRAILER_FIELDS = {
    "Authorization": AUTH,
    "X-Stepgate-Token": "something",
    "X-Stepgate-User": "mallory",
    "X-Trailer-Probe": "from-trailer",
}


@pytest.fixture(scope="module")
def slow_limits(make_gateway: Any, upstream: Upstream) -> GatewayProcess:
    # A generous upstream read timeout: only the client-side limits under test may end
    # these exchanges.
    gw: GatewayProcess = make_gateway(
        upstream={"url": upstream.url, "connect_timeout": "1s", "read_timeout": "20s"},
        limits={"header_timeout": "1s", "body_timeout": "1s", "connections_per_client": 0})
    return gw


class SlowHandler(BaseHTTPRequestHandler):
    """An upstream that answers /slow... after 2 s: a response stays in flight a while."""

    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/slow"):
            time.sleep(2)
        out = json.dumps({"path": self.path, "body_len": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def behind_slow(make_gateway: Any) -> Iterator[GatewayProcess]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    gw: GatewayProcess = make_gateway(
        upstream={"url": url, "connect_timeout": "1s", "read_timeout": "20s"},
        limits={"header_timeout": "1s", "body_timeout": "1s"})
    yield gw
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def capped(make_gateway: Any) -> GatewayProcess:
    gw: GatewayProcess = make_gateway(limits={"header_timeout": "5s", "body_timeout": "5s",
                                              "connections_per_client": 3})
    return gw


# ---------------------------------------------------------------------------- helpers

def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def parse(data: bytes) -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines[1:] if ":" in line)]
    return RawResponse(int(lines[0].split()[1]), headers, rest)


def read_responses(s: socket.socket, n: int) -> list[RawResponse]:
    """``n`` responses with Content-Length bodies, leaving the connection open."""
    out: list[RawResponse] = []
    data = b""
    while len(out) < n:
        if b"\r\n\r\n" in data:
            resp = parse(data)
            length = int(resp.header("content-length") or 0)
            if len(resp.body) >= length:
                out.append(RawResponse(resp.status, resp.headers, resp.body[:length]))
                data = resp.body[length:]
                continue
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {len(out)} responses: {data!r}"
        data += chunk
    assert data == b"", "more bytes than the responses expected"
    return out


def read_response(s: socket.socket) -> RawResponse:
    return read_responses(s, 1)[0]


def read_to_close(s: socket.socket) -> bytes:
    """Everything until the peer closes; a reset counts as a close."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def chunked_with_trailers(target: str, method: str = "POST",
                          head_fields: dict[str, str] | None = None,
                          trailers: dict[str, str] | None = None,
                          close: bool = True) -> bytes:
    fields = {"Host": "127.0.0.1", "TE": "trailers",
              "Trailer": ", ".join(trailers or TRAILER_FIELDS),
              "Transfer-Encoding": "chunked", **(head_fields or {})}
    if close:
        fields["Connection"] = "close"
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    tail = "".join(f"{k}: {v}\r\n" for k, v in (trailers or TRAILER_FIELDS).items())
    return (head + "\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n" + tail + "\r\n").encode("latin-1")


def header_map(record: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in record["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def send_all(port: int, raw: bytes) -> RawResponse:
    with connect(port) as s:
        s.sendall(raw)  # one write: the trailers are parsed before the app runs
        return parse(read_to_close(s))


def challenges(resp: RawResponse) -> list[str]:
    return [v for k, v in resp.headers if k.lower() == "www-authenticate"]


def get_keepalive(target: str = "/public/x", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def eventually_records(upstream: Upstream, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = upstream.records()
        if len(recs) >= n:
            return recs
        time.sleep(0.02)
    return upstream.records()


# ---------------------------------------------------------------------------- trailers

def test_trailer_fields_never_reach_upstream_as_headers(gateway: GatewayProcess,
                                                        upstream: Upstream) -> None:
    upstream.clear()
    raw = chunked_with_trailers("/public/x", head_fields={"X-Header-Probe": "from-head"})
    resp = send_all(gateway.port, raw)
    assert resp.status == 200, resp.body
    (rec,) = eventually_records(upstream, 1)
    assert rec["body_len"] == 11 and rec["body"] == "hello world"
    h = header_map(rec)
    assert h["x-header-probe"] == ["from-head"]  # the header section does arrive
    for name in ("authorization", "x-stepgate-token", "x-stepgate-user", "x-trailer-probe"):
        assert name not in h, (name, h)


@pytest.mark.parametrize("method,target", [("GET", "/settings/x"),
                                           ("POST", "/accounts/1/transfers")])
def test_credentials_in_trailers_are_no_identity(gateway: GatewayProcess, upstream: Upstream,
                                                 method: str, target: str) -> None:
    upstream.clear()
    # Control: the same credentials in the header section do identify the client, so the
    # answer carries no Basic challenge (a second-factor challenge or not-enrolled instead).
    control = send_all(gateway.port, chunked_with_trailers(
        target, method, head_fields={"Authorization": AUTH},
        trailers={"X-Trailer-Probe": "x"}))
    assert control.status in (401, 403), control.body
    assert not any(c.startswith("Basic") for c in challenges(control)), control.headers

    resp = send_all(gateway.port, chunked_with_trailers(target, method))
    assert resp.status == 401, resp.body
    assert resp.header("content-type") == "application/problem+json"
    assert any(c.startswith("Basic") for c in challenges(resp)), resp.headers
    assert resp.json()["type"] == "urn:stepgate:problem:second-factor-required"
    assert upstream.records() == []


def test_trailers_do_not_leak_into_the_next_request(gateway: GatewayProcess,
                                                    upstream: Upstream) -> None:
    upstream.clear()
    with connect(gateway.port) as s:
        s.sendall(chunked_with_trailers("/public/a", close=False)
                  + get_keepalive("/public/b", "X-Header-Probe: second\r\n"))
        assert [r.status for r in read_responses(s, 2)] == [200, 200]
    recs = eventually_records(upstream, 2)
    assert [r["target"] for r in recs] == ["/public/a", "/public/b"]
    assert "x-trailer-probe" not in header_map(recs[0])
    second = header_map(recs[1])
    assert second["x-header-probe"] == ["second"]
    assert "x-trailer-probe" not in second and "authorization" not in second


# ---------------------------------------------------------------------------- fragments

@pytest.mark.parametrize("target", ["/public/x#/../../admin", "/public/x?a=1#frag",
                                    "/public/x#", "/admin#/../public/x"])
def test_fragment_in_request_target_is_rejected(gateway: GatewayProcess, upstream: Upstream,
                                                target: str) -> None:
    upstream.clear()
    resp = request(gateway.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                                 f"Connection: close\r\n\r\n".encode())
    assert resp.status == 400, resp.body
    assert resp.header("content-type") == "application/problem+json"
    assert resp.json()["type"] == "urn:stepgate:problem:non-canonical-path"
    assert upstream.records() == []


# ---------------------------------------------------------------------------- head timeout

def assert_408(data: bytes) -> None:
    assert data.startswith(b"HTTP/1.1 408 "), data
    resp = parse(data)
    assert resp.header("content-type") == "application/problem+json"
    assert resp.header("connection") == "close"
    assert resp.header("cache-control") == "no-store"
    doc = resp.json()
    assert doc["type"] == "urn:stepgate:problem:request-timeout" and doc["status"] == 408


def test_silent_connection_gets_408(slow_limits: GatewayProcess) -> None:
    with connect(slow_limits.port) as s:
        assert_408(read_to_close(s))


def test_half_request_line_gets_408(slow_limits: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    with connect(slow_limits.port) as s:
        s.sendall(b"GET /public/x HT")
        assert_408(read_to_close(s))
    assert upstream.records() == []


def test_head_dribbled_byte_by_byte_still_times_out(slow_limits: GatewayProcess) -> None:
    # The limit is on the whole head, not on the gap between bytes (slowloris).
    with connect(slow_limits.port) as s:
        s.sendall(b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        dribble_until_answered(s, b"a")
        assert_408(read_to_close(s))


def dribble_until_answered(s: socket.socket, byte: bytes, seconds: float = 8) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([s], [], [], 0.2)[0]:
            return
        try:
            s.sendall(byte)
        except OSError:
            return
    pytest.fail(f"{byte!r} sent every 0.2 s for {seconds} s was never cut off")


def test_empty_lines_between_requests_do_not_hold_the_connection(
        slow_limits: GatewayProcess) -> None:
    # The parser skips empty lines before a request line (RFC 9112 §2.2) without starting
    # a message, and every read cancels uvicorn's keep-alive timer.
    with connect(slow_limits.port) as s:
        s.sendall(get_keepalive())
        assert read_response(s).status == 200
        dribble_until_answered(s, b"\r\n")
        assert_408(read_to_close(s))


def test_later_request_head_on_kept_alive_connection_times_out(
        slow_limits: GatewayProcess) -> None:
    with connect(slow_limits.port) as s:
        s.sendall(get_keepalive())
        assert read_response(s).status == 200
        # Idle past header_timeout (within uvicorn's 5 s keep-alive): the clock of the
        # next head starts at its first byte, not at the connection's start.
        time.sleep(1.5)
        s.sendall(b"GET /public/y HTTP/1.1\r\nHo")
        assert_408(read_to_close(s))


def test_head_in_pieces_within_the_limit_is_served(slow_limits: GatewayProcess) -> None:
    with connect(slow_limits.port) as s:
        s.sendall(b"GET /public/x HTTP/1.1\r\n")
        time.sleep(0.3)
        s.sendall(b"Host: x\r\n\r\n")
        assert read_response(s).status == 200


# ---------------------------------------------------------------------------- body timeout

def test_stalled_body_is_cut_off(slow_limits: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    with connect(slow_limits.port) as s:
        s.sendall(b"POST /public/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                  + b"x" * 10)
        data = read_to_close(s)  # raises socket.timeout if the gateway waits for ever
    assert not data.startswith(b"HTTP/1.1 2"), data
    time.sleep(0.3)
    assert not [r for r in upstream.records() if r["body_len"] == 100]


def test_slow_but_steady_body_is_served(slow_limits: GatewayProcess,
                                        upstream: Upstream) -> None:
    # The body limit is an idle limit: 4 pieces 0.5 s apart take longer than body_timeout
    # in total, yet never leave the connection idle for that long.
    upstream.clear()
    with connect(slow_limits.port) as s:
        s.sendall(b"POST /public/steady HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n")
        for _ in range(4):
            time.sleep(0.5)
            s.sendall(b"y" * 10)
        assert read_response(s).status == 200
    (rec,) = eventually_records(upstream, 1)
    assert rec["body_len"] == 40


def test_stalled_chunked_body_is_cut_off(slow_limits: GatewayProcess,
                                         upstream: Upstream) -> None:
    upstream.clear()
    with connect(slow_limits.port) as s:
        s.sendall(b"POST /public/stall HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n")
        data = read_to_close(s)
    assert not data.startswith(b"HTTP/1.1 2"), data
    time.sleep(0.3)
    assert not [r for r in upstream.records() if r["body_len"] >= 5]


# ---------------------------------------------------------------------------- in flight

def test_head_timeout_never_cuts_into_a_response_in_flight(behind_slow: GatewayProcess) -> None:
    # The next head stalls while the previous response is still awaited: no 408 may be
    # written ahead of that response; the connection ends after it instead.
    with connect(behind_slow.port) as s:
        s.sendall(get_keepalive("/slow/a") + b"GET /public/x HT")
        data = read_to_close(s)
    resp = parse(data)
    assert resp.status == 200, data
    assert json.loads(resp.body)["path"] == "/slow/a"
    assert b"HTTP/1.1 408" not in data


def test_body_waiting_behind_a_pipelined_request_is_not_idle(
        behind_slow: GatewayProcess) -> None:
    # uvicorn stops reading while a pipelined request waits for the one before it: the
    # body bytes sit unread through no fault of the client.
    with connect(behind_slow.port) as s:
        s.sendall(get_keepalive("/slow/b")
                  + b"POST /public/y HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        time.sleep(0.2)
        s.sendall(b"def")
        first, second = read_responses(s, 2)
    assert first.status == 200 and json.loads(first.body)["path"] == "/slow/b"
    assert second.status == 200, second.body
    assert json.loads(second.body) == {"path": "/public/y", "body_len": 6}


# ---------------------------------------------------------------------------- connection cap

@pytest.fixture
def held(capped: GatewayProcess) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def test_connections_per_client_are_capped(capped: GatewayProcess,
                                           held: list[socket.socket]) -> None:
    for _ in range(3):
        s = connect(capped.port)
        held.append(s)
        s.sendall(get_keepalive())
        assert read_response(s).status == 200
    with connect(capped.port) as extra:
        data = read_to_close(extra)
    resp = parse(data)
    assert resp.status == 503, data
    assert resp.header("content-type") == "application/problem+json"
    assert resp.header("retry-after") == "1"
    assert resp.header("connection") == "close"
    assert resp.json()["type"] == "urn:stepgate:problem:too-many-connections"

    # A held connection still serves (it was not the one refused) ...
    held[0].sendall(get_keepalive())
    assert read_response(held[0]).status == 200
    # ... and once one closes, its slot is free again (the close reaches the server
    # asynchronously, hence the retries).
    held.pop().close()
    deadline = time.monotonic() + 3
    status = None
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        with connect(capped.port) as s:
            try:
                s.sendall(get_keepalive())
                status = read_response(s).status
            except (ConnectionResetError, BrokenPipeError):
                status = None  # refused before the request was read
        assert status in (200, 503, None), status
    assert status == 200


def test_trusted_proxies_are_not_capped(make_gateway: Any) -> None:
    gw: GatewayProcess = make_gateway(trusted_proxies=["127.0.0.0/8"],
                                      limits={"connections_per_client": 1})
    socks = [connect(gw.port) for _ in range(3)]
    try:
        for s in socks:
            s.sendall(get_keepalive())
            assert read_response(s).status == 200
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------- regression

def test_keep_alive_connection_serves_many_requests(gateway: GatewayProcess,
                                                    upstream: Upstream) -> None:
    upstream.clear()
    with connect(gateway.port) as s:
        for n in range(5):
            s.sendall(get_keepalive(f"/public/k{n}"))
            assert read_response(s).status == 200
        s.sendall(b"POST /public/body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert read_response(s).status == 200
        s.sendall(get_keepalive("/public/last"))
        assert read_response(s).status == 200
    recs = eventually_records(upstream, 7)
    assert [r["target"] for r in recs] == [f"/public/k{n}" for n in range(5)] + [
        "/public/body", "/public/last"]
    assert recs[5]["body_len"] == 3
