"""Forwarding to the upstream: the Forwarder seam, its aiohttp and httpx clients, and upstream
errors mapped to problems once."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

from gateway.metrics import METRICS
from gateway.problems import Headers, Problem
from gateway.proxy.headers import StrHeaders


class UpstreamError(Problem):
    """An upstream failure, answered as problem+json. ``not_sent`` is True only when the
    request definitely never reached the upstream (no connection could be opened, or no
    pool slot was free), which is the one failure that gives a token use back."""

    not_sent = False


def upstream_unreachable(*, not_sent: bool = False) -> UpstreamError:
    err = UpstreamError("upstream-unavailable", detail="the gateway could not reach the upstream service")
    err.not_sent = not_sent
    return err


def upstream_timeout(*, not_sent: bool = False) -> UpstreamError:
    err = UpstreamError("upstream-timeout", detail="the upstream service did not answer in time")
    err.not_sent = not_sent
    return err


def upstream_busy() -> UpstreamError:
    err = UpstreamError("upstream-busy", detail="every connection to the upstream is in use; retry shortly",
                        headers=[(b"retry-after", b"1")])
    err.not_sent = True
    return err


SMALL_BODY = 64 * 1024


class Slots:
    """One slot per upstream connection. Taking a free slot is a counter decrement (no
    coroutine, no timer); waiting for one is first come, first served and bounded.
    ``asyncio.Semaphore`` costs a few microseconds per request more on the hot path."""

    __slots__ = ("free", "_waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self, timeout: float) -> bool:
        """False when no slot came free within ``timeout`` seconds."""
        if self.take_now():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self.give()  # handed over just as we gave up: pass it on
            else:
                fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                return False
            raise

    def give(self) -> None:
        """Hand the slot to the oldest waiter still waiting, or put it back."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    async def small_body(self) -> bytes | None:
        """The whole body when the upstream declared it at most SMALL_BODY bytes long
        (one send instead of a stream); None when it must be streamed."""
        ...

    def body(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Forwarder(Protocol):
    """The one seam between the gateway and its HTTP client stack."""

    async def send(self, method: str, target: str, headers: StrHeaders,
                   body: bytes | AsyncIterable[bytes] | None, *,
                   at_most_once: bool = False) -> UpstreamResponse:
        """``at_most_once``: never resend the request on another connection, not even an
        idempotent one (RFC 9112 §9.3.1 allows that retry; a counted token must not be
        delivered twice, and a legacy API's GET may change state)."""
        ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- aiohttp


class _AiohttpResponse:
    __slots__ = ("_resp", "_slot", "status", "headers")

    def __init__(self, resp: Any, slot: Slots) -> None:
        self._resp = resp
        self._slot: Slots | None = slot
        self.status = resp.status
        self.headers = resp.raw_headers

    async def small_body(self) -> bytes | None:
        import aiohttp
        length = self._resp.content_length
        if length is None or length > SMALL_BODY:
            return None
        try:
            return bytes(await self._resp.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            METRICS.upstream_error("interrupted")
            raise ConnectionError("upstream body interrupted") from exc

    async def body(self) -> AsyncIterator[bytes]:
        import aiohttp
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            METRICS.upstream_error("interrupted")
            raise ConnectionError("upstream body interrupted") from exc

    async def aclose(self) -> None:
        self._resp.release()
        if self._slot is not None:
            self._slot.give()
            self._slot = None


SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_lean: Any = None


def lean_aiohttp() -> Any:
    """(Prepared, LeanRequest): aiohttp's request building minus work that only rebuilds
    constants, for as long as the owned upstream client does not exist.

    Per request aiohttp merges the session's default headers into the request's in a Python
    loop, copies them again into the request behind a Host header, re-sorts the session's
    skip list into a new multidict and copies the headers once more to test the defaults
    against it. The gateway's sessions have no default headers and a fixed skip list, so
    the forwarder hands over its headers already in a ``Prepared`` multidict, Host first
    (one C call), and the request keeps it as it is; the skip multidict is built once. The
    upstream receives the same header section. Anything else takes aiohttp's own code.
    """
    global _lean
    if _lean is not None:
        return _lean
    import aiohttp
    from multidict import CIMultiDict, istr

    class Prepared(CIMultiDict[str]):
        """Request headers as the upstream will receive them, Host first."""

    skip_set = frozenset(istr(h) for h in SKIP_AUTO_HEADERS)
    skip_dict: CIMultiDict[None] = CIMultiDict((h, None) for h in sorted(skip_set))
    defaults = tuple((k, v) for k, v in aiohttp.ClientRequest.DEFAULT_HEADERS.items()
                     if k not in skip_set)

    class LeanRequest(aiohttp.ClientRequest):
        def update_headers(self, headers: Any) -> None:
            if type(headers) is Prepared:
                self.headers = headers
            else:
                super().update_headers(headers)

        def update_auto_headers(self, skip_auto_headers: Any) -> None:
            if skip_auto_headers != skip_set:
                super().update_auto_headers(skip_auto_headers)
                return
            self._skip_auto_headers = skip_dict
            for k, v in defaults:
                if k not in self.headers:
                    self.headers[k] = v

    _lean = Prepared, LeanRequest
    return _lean


class AiohttpForwarder:
    """Measured fastest here (docs/performance.md); no cookie jar, no decompression, no redirects."""

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float,
                 pool_size: int = 100, pool_timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        # One slot per upstream connection, held until the response is closed; waiting for
        # one is bounded (503), so slow requests cannot make every other request hang.
        self._slots = Slots(pool_size)
        self._session: Any = None
        self._once: Any = None

    def _open(self) -> Any:
        import aiohttp
        from multidict import CIMultiDict
        from yarl import URL
        self._URL = URL
        self._prepared = lean_aiohttp()[0]
        host = URL(self.base_url).host_port_subcomponent
        assert host is not None, "the upstream URL is absolute"
        self._host = host
        connector = aiohttp.TCPConnector(limit=self.pool_size, ttl_dns_cache=300)
        # Only per-socket timeouts: a `connect` or `total` timeout arms a timer on every
        # request, which measurably slows the hot path (docs/performance.md).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                        sock_read=self.read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=SKIP_AUTO_HEADERS,
            raise_for_status=False, trust_env=False, request_class=lean_aiohttp()[1])
        # The same pool, without aiohttp's resend of idempotent requests after a dropped
        # connection (aiohttp has no public switch for it; tests/e2e/test_hardening.py
        # proves the upstream sees a counted request once).
        self._once = aiohttp.ClientSession(
            connector=connector, connector_owner=False, timeout=timeout, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=SKIP_AUTO_HEADERS,
            raise_for_status=False, trust_env=False, request_class=lean_aiohttp()[1])
        self._once._retry_connection = False
        # The sessions have no default headers: merging them in (aiohttp's Python loop per
        # header) would give back the headers as they are. Should aiohttp rename the
        # method, this is simply unused.
        prepared = lean_aiohttp()[0]

        def as_given(headers: Any) -> Any:
            return headers if type(headers) is prepared else CIMultiDict(headers or ())
        for session in (self._session, self._once):
            if hasattr(session, "_prepare_headers") and not session._default_headers:
                session._prepare_headers = as_given
        return self._session

    async def send(self, method: str, target: str, headers: StrHeaders,
                   body: bytes | AsyncIterable[bytes] | None, *,
                   at_most_once: bool = False) -> UpstreamResponse:
        import aiohttp
        session = self._session or self._open()
        if at_most_once:
            session = self._once
        slots = self._slots
        if not slots.take_now() and not await slots.take(self.pool_timeout):
            METRICS.upstream_error("busy")
            raise upstream_busy()
        # encoded=True: forward the path byte for byte, no re-quoting (docs/configuration.md).
        url = self._URL(self.base_url + target, encoded=True)
        started = METRICS.clock()
        try:
            resp = await session.request(method, url, headers=self._prepared(
                [("Host", self._host), *headers]), data=body,
                                         allow_redirects=False, compress=None)
        except BaseException as exc:
            slots.give()
            # Only a connection that could not be opened proves the request was not sent.
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                METRICS.upstream_error("timeout")
                raise upstream_timeout(not_sent=True) from exc
            if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
                METRICS.upstream_error("timeout")
                raise upstream_timeout() from exc
            if isinstance(exc, aiohttp.ClientConnectorError):
                METRICS.upstream_error("connect")
                raise upstream_unreachable(not_sent=True) from exc
            if isinstance(exc, (aiohttp.ClientError, OSError)):
                METRICS.upstream_error("other")
                raise upstream_unreachable() from exc
            raise
        METRICS.upstream(started)
        return _AiohttpResponse(resp, slots)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._once.close()
            await self._session.close()
            self._session = self._once = None


# ---------------------------------------------------------------- httpx


class _HttpxResponse:
    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = resp.headers.raw

    async def small_body(self) -> bytes | None:
        return None

    async def body(self) -> AsyncIterator[bytes]:
        import httpx
        if hasattr(self._resp, "_content"):  # already read (e.g. a MockTransport response)
            yield self._resp.content
            return
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            METRICS.upstream_error("interrupted")
            raise ConnectionError("upstream body interrupted") from exc

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxForwarder:
    """httpx-based; slower, but takes any transport (respx, MockTransport) for unit tests."""

    def __init__(self, base_url: str, *, connect_timeout: float = 2.0, read_timeout: float = 30.0,
                 transport: Any = None) -> None:
        import httpx
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout))

    async def send(self, method: str, target: str, headers: StrHeaders,
                   body: bytes | AsyncIterable[bytes] | None, *,
                   at_most_once: bool = False) -> UpstreamResponse:
        import httpx  # its transport never resends a request
        url = httpx.URL(self.base_url + target)
        req = self._client.build_request(method, url, headers=headers, content=body)
        # httpx would add these defaults; the upstream must see what the client sent.
        sent = {k.lower() for k, _ in headers}
        for name in ("accept", "accept-encoding", "user-agent", "connection"):
            if name not in sent and name in req.headers:
                del req.headers[name]
        started = METRICS.clock()
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.PoolTimeout as exc:
            METRICS.upstream_error("busy")
            raise upstream_busy() from exc
        except httpx.ConnectTimeout as exc:
            METRICS.upstream_error("timeout")
            raise upstream_timeout(not_sent=True) from exc
        except httpx.TimeoutException as exc:
            METRICS.upstream_error("timeout")
            raise upstream_timeout() from exc
        except httpx.ConnectError as exc:
            METRICS.upstream_error("connect")
            raise upstream_unreachable(not_sent=True) from exc
        except httpx.HTTPError as exc:
            METRICS.upstream_error("other")
            raise upstream_unreachable() from exc
        METRICS.upstream(started)
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()
