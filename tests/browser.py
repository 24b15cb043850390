"""A headless Chromium from the distribution, driven over the DevTools protocol (no Playwright download).

`Browser` starts `chromium --headless` on a free debugging port with a throwaway profile; `Page`
speaks CDP to its first tab over a websocket (aiohttp's client) and collects console errors and
uncaught exceptions as they happen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from typing import Any

import aiohttp

from shepherd.testing import free_ports

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("Chromium is needed for the status-page test: `apt-get install chromium` "
                         "(`make test` installs it when missing)")


class Browser:
    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.profile = tempfile.mkdtemp(prefix="shepherd-chromium-")
        self.proc = subprocess.Popen(
            [find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--metrics-recording-only",
             f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", "--window-size=1400,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def page(self) -> Page:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # Chromium takes a moment to open its debugging port
                if self.proc.poll() is not None:
                    raise AssertionError(f"chromium exited with {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.port}/json/list") as response:
                        targets = await response.json()
                        pages = [t for t in targets if t.get("type") == "page"]
                        if pages:
                            return await Page.connect(pages[0]["webSocketDebuggerUrl"])
                await asyncio.sleep(0.1)
        raise AssertionError("chromium did not open its DevTools port")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


class Page:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []  # console errors, uncaught exceptions, failed loads
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str) -> Page:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, max_msg_size=64 * 1024 * 1024)
        page = cls(session, ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        return page

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = message.json()
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            self._on_event(data.get("method", ""), data.get("params", {}))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            words = (str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append("console: " + " ".join(words))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description", details.get("text"))
            self.errors.append(f"exception: {description}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self._ws.send_json({"id": message_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float, message: str) -> Any:
        """Poll a JavaScript expression until it is truthy, for at most `within` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {message}; last value {value!r}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: str) -> int:
        """Write a PNG of the whole page to `path`; returns its size in bytes."""
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(result["data"])
        await asyncio.to_thread(_write, path, data)
        return len(data)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()
        await self._session.close()
