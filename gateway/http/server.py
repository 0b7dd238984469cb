"""The HTTP server protocol: uvicorn's httptools protocol with what the gateway needs from
the connection layer.

- Unparseable requests (for example both Content-Length and Transfer-Encoding, RFC 9112
  §6.3) are answered with problem+json like every other error of the gateway.
- Trailer fields of a chunked request (RFC 9112 §7.1.2) are dropped: uvicorn would append
  them to the header list the application already holds, so credentials sent after the
  body would read as request headers. RFC 9110 §6.5.1 forbids merging trailers into the
  header section unless each field is known to be safe there.
- A fragment in the request target (RFC 9112 §3.2 does not allow one) is kept in
  ``raw_path``, where the path canonicaliser refuses it; httptools would cut it off.
- Slow clients (slowloris): the request head must arrive within ``limits.header_timeout``,
  a body must not stall for ``limits.body_timeout``.
- One client address holds at most ``limits.connections_per_client`` connections.
- A forward-auth ask whose answer is known without waiting (an allow the decision
  remembers) is answered here, without an ASGI cycle: the application's ``quick(scope)``
  gives the bytes (http/forwardauth.py); anything else takes the ASGI path.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.config.settings import ClientLimits
from gateway.primitives import Networks
from gateway.problems import Problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _raw(problem: Problem, status_line: bytes) -> bytes:
    _, headers, payload = problem.render()
    return b"".join([status_line, *(k + b": " + v + b"\r\n" for k, v in headers),
                     b"connection: close\r\n\r\n", payload])


_BAD_REQUEST = _raw(Problem("bad-framing",
                            detail="the HTTP request is malformed (its framing could be read two ways, or it "
           "does not parse)"), b"HTTP/1.1 400 Bad Request\r\n")

_TOO_MANY = _raw(Problem("too-many-connections",
                         detail="this client address holds too many open connections to the gateway",
    headers=[(b"retry-after", b"1")]), b"HTTP/1.1 503 Service Unavailable\r\n")


@functools.lru_cache(maxsize=8)
def _timed_out(seconds: float) -> bytes:
    return _raw(Problem("request-timeout",
                        detail=f"the request line and headers did not arrive within {seconds:g}s"),
        b"HTTP/1.1 408 Request Timeout\r\n")


# Open connections per client address, one table per server (the protocol factory gets the
# same ServerState for every connection of one server); entries at zero are removed.
_OPEN: weakref.WeakKeyDictionary[ServerState, dict[str, int]] = weakref.WeakKeyDictionary()


Quick = Callable[[Any], bytes | None]


def _limits_of(app: Any) -> tuple[ClientLimits, Sequence[Network], Quick | None]:
    # uvicorn may wrap the application in middleware (each keeps the next as ``.app``).
    for _ in range(4):
        settings = getattr(app, "settings", None)
        if settings is not None:
            return (getattr(settings, "limits", None) or ClientLimits(),
                    getattr(settings, "trusted_proxies", ()), getattr(app, "quick", None))
        app = getattr(app, "app", None)
        if app is None:
            break
    return ClientLimits(), (), None


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits, trusted, self._quick = _limits_of(self.app)
        self._trusted = Networks(trusted)
        # A timeout of 0 means no limit, like connections_per_client: 0.
        self._head_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._cap = limits.connections_per_client
        self._open = _OPEN.setdefault(server_state, {})
        self._counted: str | None = None
        # Loop time the current request head began at, None between heads.
        self._head_since: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # Between the end of a head and the end of its message.
        self._in_body = False
        self._body_last = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if self._cap and host is not None and host not in self._trusted:
            n = self._open.get(host, 0)
            if n >= self._cap:
                self.logger.debug("%s: too many connections", host)
                transport.write(_TOO_MANY)
                transport.close()
                return
            self._open[host] = n + 1
            self._counted = host
        # uvicorn arms its keep-alive timer only after a response, so a fresh connection
        # that never sends a byte would otherwise be held for ever.
        self._head_since = self.loop.time()
        if self._head_timeout:
            self._head_timer = self.loop.call_at(self._head_since + self._head_timeout,
                                                 self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection passes to another protocol object; connection_lost comes to that one.
        self._release()
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        self._head_since = None
        self._in_body = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        host = self._counted
        if host is not None:
            self._counted = None
            n = self._open.get(host, 1) - 1
            if n > 0:
                self._open[host] = n
            else:
                self._open.pop(host, None)

    def data_received(self, data: bytes) -> None:
        if self._head_since is None and not self._in_body:
            # Bytes between messages begin the next head, even the empty lines a server
            # skips before a request line (RFC 9112 §2.2): they cancel uvicorn's keep-alive
            # timer, so they must start this one.
            self._head_since = self.loop.time()
        super().data_received(data)
        # Timers are armed only when a head or body is left unfinished by this read: a
        # request that arrives whole costs none.
        if self._head_since is not None:
            if self._head_timer is None and self._head_timeout:
                self._head_timer = self.loop.call_at(self._head_since + self._head_timeout,
                                                     self._head_expired)
        elif self._in_body and self._body_timer is None and self._body_timeout:
            self._body_last = now = self.loop.time()
            self._body_timer = self.loop.call_at(now + self._body_timeout, self._body_idle)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # a pipelined request that began inside this read
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._head_since = None
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return  # a WebSocket upgrade: no request cycle was made for this head
        self._in_body = True
        # From here on the parser appends trailer fields to self.headers; the scope keeps
        # the header section's list and the trailers land in one nobody reads.
        self.headers = []
        url = self.url
        if 0x23 in url:  # b"#": an int test skips bytes' costly TypeError path
            # httptools' parse_url drops the fragment, so "/public/x#/../../admin" would be
            # routed as "/public/x"; kept in raw_path, the canonicaliser answers 400.
            self.scope["raw_path"] += url[url.index(b"#"):]

    def on_body(self, body: bytes) -> None:
        if self._body_timer is not None:
            self._body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        quick = self._quick
        # Only a request parsed just now (not one queued behind a pipelined response) and
        # without a fragment, which on_headers_complete has yet to keep in raw_path.
        if quick is not None and cycle.scope is self.scope and 0x23 not in self.url:
            raw = quick(cycle.scope)
            if raw is not None:
                # The whole answer at once, as uvicorn's cycle would write it (its default
                # Date and Server fields, Connection: close when the connection ends).
                cycle.response_started = cycle.response_complete = True
                fields = b"".join(k + b": " + v + b"\r\n" for k, v in cycle.default_headers)
                if not cycle.keep_alive:
                    fields += b"connection: close\r\n"
                self.transport.write(raw + fields + b"\r\n")
                if not cycle.keep_alive:
                    self.transport.close()
                self.on_response_complete()
                return
        super()._start_asgi_task(cycle, app)

    # ------------------------------------------------------------------ timers

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._head_since is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # uvicorn stopped reading (a pipelined request waits): not the client's delay.
            self._head_since = now
        deadline = self._head_since + self._head_timeout
        if deadline > now:
            self._head_timer = self.loop.call_at(deadline, self._head_expired)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A response is still being written on this connection: a 408 cannot be
            # interleaved with it, so the connection ends once that response is complete.
            cycle.keep_alive = False
            return
        self.logger.debug("request head timed out")
        self.transport.write(_timed_out(self._head_timeout))
        self.transport.close()

    def _body_idle(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # Not the client's delay: uvicorn stopped reading (flow control), or the client
            # waits for the 100 Continue the application has not asked for yet (RFC 9110
            # §10.1.1).
            self._body_last = now
        deadline = self._body_last + self._body_timeout
        if deadline > now:
            self._body_timer = self.loop.call_at(deadline, self._body_idle)
            return
        # The application sees http.disconnect; whatever it was streaming upstream is cut.
        self.logger.debug("request body stalled")
        self.transport.close()

    # ------------------------------------------------------------------ errors

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_BAD_REQUEST)
        self.transport.close()
