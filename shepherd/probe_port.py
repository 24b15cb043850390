"""--health-check-port: /liveness, /readiness and /health on a listener of their own, served by a thread
with its own event loop (as SMG's isolated probe runtime). Probes are then answered while the gateway's
loop is saturated with requests, and whatever the main port's keys, admission and connection limits are.

The probe thread never touches the gateway's objects: the gateway's loop publishes its readiness answer
every PUBLISH_SECS, and the thread serves the latest one. A gateway loop that has published nothing for
STUCK_AFTER_SECS is stuck (its main port answers nobody either): then every probe answers 503, so a
liveness probe restarts a gateway that can no longer serve, instead of reporting it alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from shepherd.http_server import GatewayRunner
from shepherd.periodic import Periodic

log = logging.getLogger("shepherd.probes")

PUBLISH_SECS = 0.25  # how stale a readiness answer on the probe port may be
STUCK_AFTER_SECS = 10.0  # no answer published for this long: the gateway's loop is stuck
PROBE_PATHS = ("/liveness", "/readiness", "/health")


class Published(NamedTuple):
    at: float  # time.monotonic() of publication
    status: int
    body: bytes


ReadinessState = Callable[[], tuple[int, dict[str, Any]]]


class ProbeListener:
    """The probe port: started and stopped from the gateway's loop, served from its own thread."""

    def __init__(self, host: str, port: int, readiness: ReadinessState, *, header_timeout: float,
                 reuse_port: bool = False, stuck_after_secs: float = STUCK_AFTER_SECS) -> None:
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._readiness = readiness
        self._header_timeout = header_timeout
        self._stuck_after = stuck_after_secs
        self._latest = Published(0.0, 503, b"")  # replaced whole (one reference swap: safe across threads)
        self._publisher = Periodic("probe-port publisher", PUBLISH_SECS, self._publish, log)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None  # the bound port

    async def start(self) -> None:
        """Bind the port (an OSError if it cannot be bound) and start publishing."""
        await self._publish()
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="shepherd-probes", daemon=True)
        self._thread.start()
        self.port = await asyncio.wrap_future(started)
        self._publisher.start()

    async def stop(self) -> None:
        await self._publisher.stop()
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 5.0)
        self._thread = None

    async def _publish(self) -> None:
        status, body = self._readiness()
        self._latest = Published(time.monotonic(), status, orjson.dumps(body))

    # -- the probe thread -------------------------------------------------------------------------

    def _serve(self, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        for path in PROBE_PATHS:
            app.router.add_get(path, self._answer)
        runner = GatewayRunner(app, header_timeout=self._header_timeout, idle_timeout=self._header_timeout,
                               access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self._host, self._port, reuse_address=True,
                               reuse_port=True if self._reuse_port else None)
            loop.run_until_complete(site.start())
            server = getattr(site, "_server", None)
            port = int(server.sockets[0].getsockname()[1]) if server is not None and server.sockets else self._port
        except BaseException as exc:
            loop.run_until_complete(runner.cleanup())
            loop.close()
            started.set_exception(exc)
            return
        started.set_result(port)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _answer(self, request: web.Request) -> web.Response:
        status, body = probe_answer(request.path, self._latest, time.monotonic(), self._stuck_after)
        if request.path == "/readiness" or status != 200:
            return web.Response(status=status, body=body, content_type="application/json")
        return web.Response(body=body, content_type="text/plain")


def probe_answer(path: str, latest: Published, now: float, stuck_after_secs: float) -> tuple[int, bytes]:
    """What the probe port answers on `path`, given the gateway's latest published readiness."""
    age = now - latest.at
    if age > stuck_after_secs:
        reason = f"the gateway's event loop has published nothing for {age:.0f}s"
        return 503, orjson.dumps({"status": "not ready", "reason": reason})
    if path == "/readiness":
        return latest.status, latest.body
    return 200, b"OK"
