"""The aiohttp forwarder against a raw socket: the exact header section it sends, and the
connection slots that bound it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.proxy.forwarder import AiohttpForwarder, Slots

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def raw_upstream() -> AsyncIterator[tuple[int, list[bytes]]]:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            heads.append(head)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, heads
    server.close()
    await server.wait_closed()


async def test_the_upstream_receives_exactly_the_headers_given(
        raw_upstream: tuple[int, list[bytes]]) -> None:
    """Host first (from the upstream URL), then the given fields in order with their
    spelling and duplicates, and nothing aiohttp would add by default (User-Agent, Accept,
    Accept-Encoding, Content-Type)."""
    port, heads = raw_upstream
    fw = AiohttpForwarder(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=5)
    try:
        for body in (None, b"{}"):
            resp = await fw.send("POST", "/a%2Fb?x=1", [("x-a", "1"), ("X-A", "2"),
                                                        ("via", "1.1 stepgate")], body)
            assert resp.status == 200 and await resp.small_body() == b"ok"
            await resp.aclose()
    finally:
        await fw.aclose()
    lines = [h.decode().split("\r\n")[:-2] for h in heads]
    assert lines[0] == ["POST /a%2Fb?x=1 HTTP/1.1", f"Host: 127.0.0.1:{port}", "x-a: 1",
                        "X-A: 2", "via: 1.1 stepgate", "Content-Length: 0"]
    assert lines[1] == ["POST /a%2Fb?x=1 HTTP/1.1", f"Host: 127.0.0.1:{port}", "x-a: 1",
                        "X-A: 2", "via: 1.1 stepgate", "Content-Length: 2"]


async def test_slots_are_first_come_first_served_and_bounded() -> None:
    slots = Slots(1)
    assert slots.take_now() and not slots.take_now()
    order: list[str] = []

    async def wait(name: str, timeout: float) -> None:
        order.append(f"{name}:{'got' if await slots.take(timeout) else 'timed out'}")
    quick = asyncio.create_task(wait("quick", 0.05))
    patient = asyncio.create_task(wait("patient", 5))
    later = asyncio.create_task(wait("later", 5))
    await asyncio.sleep(0.2)
    assert order == ["quick:timed out"]
    slots.give()
    await asyncio.sleep(0)
    assert order == ["quick:timed out", "patient:got"]
    slots.give()
    await asyncio.gather(quick, patient, later)
    assert order[-1] == "later:got"
    slots.give()
    assert slots.free == 1 and not slots._waiters


async def test_a_slot_handed_over_as_its_waiter_is_cancelled_is_passed_on() -> None:
    """The waiter's future got the slot, but its task was cancelled before it ran: the slot
    must go to the next waiter (or back to the pool), never be lost."""
    slots = Slots(1)
    assert slots.take_now()
    first = asyncio.create_task(slots.take(5))
    second = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    slots.give()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is True
    slots.give()
    assert slots.free == 1
