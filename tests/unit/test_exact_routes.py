"""ExactRoutes, the router bypass for exact (method, path) requests: every request gets what aiohttp's
own resolution gives it (route, parameters, app, middlewares in order, 404/405, Expect), compared
over real sockets with a twin app served by a plain AppRunner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from shepherd.http_server import ExactRoutes, GatewayRunner

Calls = list[str]


def _app(calls: Calls) -> web.Application:
    def layer(name: str) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            calls.append(name)
            response = await handler(request)
            response.headers[f"X-{name}"] = str(len(calls))
            return response
        return middleware

    app = web.Application(middlewares=[layer("outer"), layer("inner")])

    async def echo(request: web.Request) -> web.Response:
        calls.append("handler")
        return web.json_response({
            "method": request.method, "path": request.path, "query": request.query_string,
            "route": request.match_info.route.resource.canonical,  # type: ignore[union-attr]
            "params": dict(request.match_info), "same_app": request.app is app, "body": await request.text()})

    app.router.add_get("/a", echo)
    app.router.add_post("/a", echo)
    app.router.add_post("/items/{id}", echo)
    app.router.add_route("*", "/any", echo)
    app.router.add_get("/v1/{name}", echo)  # could match /v1/models too; the plain route below wins
    app.router.add_get("/v1/models", echo)
    return app


# (method, target, extra head lines, body): plain hits, and every way a target can miss the table
REQUESTS = [
    ("GET", "/a", "", b""), ("HEAD", "/a", "", b""), ("POST", "/a", "", b'{"x": 1}'), ("PUT", "/a", "", b""),
    ("GET", "/a?x=1", "", b""), ("GET", "/%61", "", b""), ("GET", "/./a", "", b""), ("GET", "//a", "", b""),
    ("GET", "/a/", "", b""), ("POST", "/items/7", "", b"seven"), ("DELETE", "/any", "", b""),
    ("GET", "/v1/models", "", b""), ("GET", "/v1/other", "", b""), ("GET", "/nope", "", b""),
    ("POST", "/a", "Expect: 100-continue\r\n", b"expected"), ("GET", "http://x/a", "", b""),
]


async def _exchange(port: int, method: str, target: str, head: str, body: bytes) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    raw = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    if head_bytes.startswith(b"HTTP/1.1 100"):  # the interim answer to Expect
        head_bytes, _, payload = payload.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    kept = {k: v for k, v in headers.items() if k.startswith("x-") or k in ("allow", "content-type")}
    return int(lines[0].split()[1]), kept, payload


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.BaseRunner] = []

    async def start(app: web.Application, gateway: bool) -> int:
        runner: web.AppRunner = GatewayRunner(app, header_timeout=5, idle_timeout=5) if gateway else web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_every_request_gets_what_the_router_gives_it(serve: Callable[..., Any]) -> None:
    ours: Calls = []
    theirs: Calls = []
    ours_port, theirs_port = await serve(_app(ours), True), await serve(_app(theirs), False)
    for method, target, head, body in REQUESTS:
        ours.clear()
        theirs.clear()
        got = await _exchange(ours_port, method, target, head, body)
        expected = await _exchange(theirs_port, method, target, head, body)
        assert got == expected, (method, target)
        assert ours == theirs, (method, target)  # the same middlewares, in the same order
        if got[0] == 200 and method != "HEAD":
            assert orjson.loads(got[2])["same_app"]


async def test_exact_requests_skip_the_router_and_the_rest_do_not(serve: Callable[..., Any]) -> None:
    app = _app([])
    port = await serve(app, True)
    resolved: list[str] = []
    resolve = app.router.resolve

    async def counting(request: web.Request) -> Any:
        resolved.append(request.raw_path)
        return await resolve(request)

    app.router.resolve = counting  # type: ignore[method-assign]
    for method, target, head, body in REQUESTS:
        await _exchange(port, method, target, head, body)
    exact = {("GET", "/a"), ("HEAD", "/a"), ("POST", "/a"), ("GET", "/v1/models")}
    assert sorted(resolved) == sorted(target for method, target, head, _ in REQUESTS
                                      if (method, target) not in exact or head)


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


async def test_an_app_with_a_sub_app_keeps_the_router() -> None:
    app = web.Application()
    app.router.add_get("/a", _ok)
    sub = web.Application()
    app.add_subapp("/sub", sub)
    app.freeze()
    routes = ExactRoutes(app)
    await routes.build()
    assert routes._routes == {}


async def test_an_unfrozen_app_keeps_the_router() -> None:
    app = web.Application()
    app.router.add_get("/a", _ok)
    routes = ExactRoutes(app)
    await routes.build()
    assert routes._routes == {}
