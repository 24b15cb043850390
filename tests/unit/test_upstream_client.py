"""The proxy's HTTP/1.1 client against scripted servers on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shepherd.transport.errors import UpstreamError, UpstreamTimeout
from shepherd.transport.lean import LeanTransport

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A server running `script` per connection; yields its URL and a list of connection ids."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body


@pytest.fixture
async def pool() -> AsyncIterator[LeanTransport]:
    upstream = LeanTransport(connect_timeout=2, idle_timeout=5)
    yield upstream
    await upstream.close()


async def test_request_and_keep_alive_reuse(pool: LeanTransport) -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head)
            writer.write(ok(body, b"X-Test: yes\r\n"))
            await writer.drain()

    async with serve(echo) as (url, connections):
        for i in range(3):
            response = await pool.request("POST", url, "/v1/x", {"x-a": "1"}, b'{"n": %d}' % i, 5)
            assert response.status == 200 and response.headers["x-test"] == "yes"
            assert await response.read() == b'{"n": %d}' % i
        assert len(connections) == 1  # one connection served all three
        assert seen[0].startswith(b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"x-a: 1\r\n" in seen[0] and b"content-length: 8\r\n" in seen[0]


async def test_chunked_body_streams_as_it_arrives(pool: LeanTransport) -> None:
    release = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b"5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(stream) as (url, _):
        response = await pool.request("GET", url, "/s", {}, None, 5)
        assert response.content_length is None
        chunks = response.iter_chunks()
        assert await chunks.__anext__() == b"first"  # before the server sent the rest
        release.set()
        assert [c async for c in chunks] == [b"second"]
        assert pool.open_connections == 1  # finished: pooled for reuse


async def test_close_delimited_body(pool: LeanTransport) -> None:
    async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with serve(legacy) as (url, _):
        response = await pool.request("GET", url, "/", {}, None, 5)
        assert await response.read() == b"all of it"


async def test_stale_pooled_connection_is_resent_once(pool: LeanTransport) -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        writer.write(ok(b"done"))
        await writer.drain()
        # Close without Connection: close, as an engine's keep-alive timeout would.

    async with serve(one_shot) as (url, connections):
        assert await (await pool.request("GET", url, "/", {}, None, 5)).read() == b"done"
        await asyncio.sleep(0.05)
        assert await (await pool.request("GET", url, "/", {}, None, 5)).read() == b"done"
        assert len(connections) == 2


async def test_timeout_waiting_for_the_head(pool: LeanTransport) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # returns when the client aborts

    async with serve(silent) as (url, _):
        with pytest.raises(UpstreamTimeout):
            await pool.request("POST", url, "/", {}, b"{}", 0.2)
        assert pool.open_connections == 0


async def test_timeout_covers_the_body(pool: LeanTransport) -> None:
    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        await reader.read()

    async with serve(slow_body) as (url, _):
        response = await pool.request("GET", url, "/", {}, None, 0.3)
        with pytest.raises(UpstreamTimeout):
            await response.read()


async def test_each_request_on_a_reused_connection_keeps_its_own_deadline(pool: LeanTransport) -> None:
    # One timer serves a connection's exchanges: it must neither end a later exchange at an
    # earlier one's deadline nor let a shorter later deadline pass.
    async def fast_then_slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            await asyncio.sleep(0.4 if b"/slow" in head else 0)
            writer.write(ok(b"done"))
            await writer.drain()

    async with serve(fast_then_slow) as (url, connections):
        assert await (await pool.request("GET", url, "/fast", {}, None, 0.2)).read() == b"done"
        # The first exchange's deadline passes while this one is in progress: it is not this one's.
        assert await (await pool.request("GET", url, "/slow", {}, None, 2)).read() == b"done"
        assert await (await pool.request("GET", url, "/fast", {}, None, 30)).read() == b"done"
        assert len(connections) == 1
        # Armed for 30 s, the connection's timer must still end this exchange at its own deadline.
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            await (await pool.request("GET", url, "/slow", {}, None, 0.2)).read()
        assert asyncio.get_running_loop().time() - started < 0.35
        assert len(connections) == 1


async def test_early_close_aborts_the_connection(pool: LeanTransport) -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await reader.read()  # EOF once the client aborts
        closed.set()

    async with serve(endless) as (url, _):
        response = await pool.request("GET", url, "/", {}, None, 5)
        assert await response.iter_chunks().__anext__() == b"abc"
        response.close()
        await asyncio.wait_for(closed.wait(), 2)
        assert pool.open_connections == 0


async def test_broken_mid_body_and_refused_and_malformed(pool: LeanTransport) -> None:
    async def breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with serve(breaks) as (url, _):
        response = await pool.request("GET", url, "/", {}, None, 5)
        with pytest.raises(UpstreamError, match="mid-response"):
            await response.read()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(garbage) as (url, _):
        with pytest.raises(UpstreamError):
            await pool.request("GET", url, "/", {}, None, 5)

    with pytest.raises(UpstreamError, match="cannot connect"):
        await pool.request("GET", "http://127.0.0.1:9", "/", {}, None, 5)


async def test_read_limit(pool: LeanTransport) -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"x" * 1000))
        await writer.drain()

    async with serve(big) as (url, _):
        response = await pool.request("GET", url, "/", {}, None, 5)
        with pytest.raises(ValueError):
            await response.read(limit=100)
