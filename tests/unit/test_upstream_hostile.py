"""The proxy's HTTP/1.1 client against workers that answer too much, too long, or twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shepherd.transport.errors import UpstreamError
from shepherd.transport.lean import MAX_RESPONSE_HEADERS, LeanTransport
from tests.unit.test_upstream_client import ok, read_request, serve


@pytest.fixture
async def pool() -> AsyncIterator[LeanTransport]:
    upstream = LeanTransport(connect_timeout=2, idle_timeout=5)
    yield upstream
    await upstream.close()


async def test_a_body_over_the_high_water_mark_is_read_whole(pool: LeanTransport) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB, three times the flow-control high-water mark

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(body))
            await writer.drain()

    async with serve(big) as (url, _):
        # Before the fix the reader paused above 1 MiB and never resumed: this timed out.
        response = await pool.request("GET", url, "/", {}, None, 10)
        assert await response.read() == body
        response = await pool.request("GET", url, "/", {}, None, 10)  # the connection was reusable
        assert len(await response.read(limit=len(body))) == len(body)


async def test_too_many_response_headers_fail_fast(pool: LeanTransport) -> None:
    async def many(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
                     + b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(many) as (url, _):
        with pytest.raises(UpstreamError, match=f"more than {MAX_RESPONSE_HEADERS} response headers"):
            await pool.request("GET", url, "/", {}, None, 30)
    assert pool.open_connections == 0


async def test_a_head_that_never_ends_is_cut_off(pool: LeanTransport) -> None:
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        while sent < 64 * 1024 * 1024:  # one header value that never ends (bounded for the test's sake)
            writer.write(b"a" * 65536)
            sent += 65536
            await writer.drain()

    async with serve(endless) as (url, _):
        with pytest.raises(UpstreamError, match="response head exceeds"):
            await pool.request("GET", url, "/", {}, None, 30)
    assert sent < 64 * 1024 * 1024  # the gateway hung up long before the worker was done


async def test_bytes_after_the_response_are_not_part_of_it(pool: LeanTransport) -> None:
    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"first") + ok(b"SECOND RESPONSE"))  # one write: both land in one read
            await writer.drain()

    async with serve(twice) as (url, connections):
        response = await pool.request("GET", url, "/", {}, None, 5)
        assert await response.read() == b"first"
        response = await pool.request("GET", url, "/", {}, None, 5)
        assert await response.read() == b"first"  # not the leftover second response
        assert len(connections) == 2  # the out-of-step connection was discarded, not reused


async def test_chunked_answer_followed_by_junk(pool: LeanTransport) -> None:
    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nleak")
        await writer.drain()
        await reader.read()

    async with serve(junk) as (url, _):
        response = await pool.request("GET", url, "/", {}, None, 5)
        assert b"".join([chunk async for chunk in response.iter_chunks()]) == b"abc"
    assert pool.open_connections == 0
