"""`shepherd launch --workers N`: N gateway processes on one port, under a supervisor.

* The port: the supervisor binds it with SO_REUSEPORT (without listening, so it gets no
  connections) to fail early when it is taken and to keep it while a child restarts; each child
  binds and listens on it with SO_REUSEPORT too, and the kernel spreads new connections among them.
* A child that exits unasked is restarted after a backoff (0.5 s doubling to 30 s; back to 0.5 s
  once a child has lived a minute); after MAX_QUICK_FAILURES failures in a row, or a configuration
  error (exit status 2), the supervisor stops every child and exits non-zero.
* SIGTERM or SIGINT is forwarded to every child, which drains as a single gateway does; a second
  signal is forwarded too (children stop at once).
* /metrics on --prometheus-port is the children's metrics merged (observability/aggregate.py):
  each child listens for metrics on a loopback port it writes to the supervisor's folder.
* Shared state: with --mesh-redis-url every child is a mesh member; without it, the children share
  the worker registry through a file channel in the supervisor's folder (mesh/file_store.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shepherd.config import GatewayConfig
from shepherd.exposure import bind_error
from shepherd.observability.aggregate import merge

log = logging.getLogger("shepherd.supervisor")

CHILD_ENV = "_SHEPHERD_CHILD"  # not SHEPHERD_*: that prefix is read as flags
INITIAL_BACKOFF_SECS = 0.5
MAX_BACKOFF_SECS = 30.0
STABLE_SECS = 60.0  # a child that lived this long resets the backoff
MAX_QUICK_FAILURES = 8
EXIT_CONFIG_ERROR = 2
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass(frozen=True)
class ChildInfo:
    """What a child learns from its supervisor (the CHILD_ENV variable)."""

    index: int
    count: int
    port: int
    folder: str

    def encode(self) -> str:
        return orjson.dumps({"index": self.index, "count": self.count, "port": self.port,
                             "folder": self.folder}).decode()

    @classmethod
    def decode(cls, value: str) -> ChildInfo:
        data = orjson.loads(value)
        return cls(int(data["index"]), int(data["count"]), int(data["port"]), str(data["folder"]))

    @property
    def metrics_port_file(self) -> str:
        return metrics_port_file(self.folder, self.index)


def stop_with_parent() -> None:
    """In a child: get SIGTERM (and drain) if the supervisor dies, even by SIGKILL (Linux only)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def metrics_port_file(folder: str, index: int) -> str:
    return os.path.join(folder, f"metrics-{index}.port")


def _read_port(path: str) -> int:
    with open(path) as file:  # a few bytes on a local disk
        return int(file.read().strip())


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_error("gateway", host, port, exc) from None
    return sock


class Supervisor:
    def __init__(self, config: GatewayConfig, argv: list[str]) -> None:
        self._config = config
        self._argv = argv  # the launch command line, re-run by every child
        self._count = config.process.workers
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._restarts = 0
        self._failed = False
        self._folder = ""
        self.exit_status = 0

    async def run(self) -> None:
        config = self._config
        reservation = _reserve(config.host, config.port)
        self._folder = tempfile.mkdtemp(prefix="shepherd-supervisor-")
        metrics_runner = None
        try:
            if not config.disable_metrics:
                metrics_runner = await self._serve_metrics()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
            log.info("supervisor %d: starting %d gateway processes on %s:%d", os.getpid(), self._count,
                     config.host, config.port)
            await asyncio.gather(*(self._keep(index) for index in range(self._count)))
        finally:
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            reservation.close()
            shutil.rmtree(self._folder, ignore_errors=True)
        self.exit_status = 1 if self._failed else 0

    def _on_signal(self, sig: int) -> None:
        first = not self._stopping.is_set()
        self._stopping.set()
        log.info("supervisor: %s, %s", signal.Signals(sig).name,
                 "draining every process" if first else "stopping every process now")
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    def _stop_all(self) -> None:
        self._stopping.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def _keep(self, index: int) -> None:
        """Run child `index` until the supervisor stops, restarting it when it dies."""
        failures = 0
        env = {**os.environ, CHILD_ENV: ChildInfo(index, self._count, self._config.port, self._folder).encode()}
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shepherd", *self._argv, env=env)
            self._procs[index] = proc
            if self._stopping.is_set():  # a signal came while it was being spawned: it was not told
                proc.send_signal(signal.SIGTERM)
            status = await proc.wait()
            if self._stopping.is_set():
                return
            failures = 1 if time.monotonic() - started > STABLE_SECS else failures + 1
            if status == EXIT_CONFIG_ERROR or failures > MAX_QUICK_FAILURES:
                log.error("gateway process %d exited with status %d %s; stopping the gateway", index, status,
                          "(configuration error)" if status == EXIT_CONFIG_ERROR else
                          f"after {failures - 1} restarts in a row")
                self._failed = True
                self._stop_all()
                return
            delay = min(MAX_BACKOFF_SECS, INITIAL_BACKOFF_SECS * 2 ** (failures - 1))
            log.warning("gateway process %d (pid %d) exited with status %d; restarting it in %.1fs", index,
                        proc.pid, status, delay)
            self._restarts += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass

    # -- one /metrics for the whole gateway -----------------------------------------------------

    async def _serve_metrics(self) -> web.AppRunner:
        session = aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT)

        async def scrape(request: web.Request) -> web.Response:
            texts = [t for t in await asyncio.gather(*(self._scrape(session, i) for i in range(self._count)))
                     if t is not None]
            body = await asyncio.get_running_loop().run_in_executor(None, merge, texts, self._own_metrics(len(texts)))
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def close_session(app: web.Application) -> None:
            await session.close()

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        app.on_cleanup.append(close_session)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        config = self._config
        try:
            await web.TCPSite(runner, config.prometheus_host, config.prometheus_port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise bind_error("metrics", config.prometheus_host, config.prometheus_port, exc) from None
        return runner

    async def _scrape(self, session: aiohttp.ClientSession, index: int) -> str | None:
        try:
            port = _read_port(metrics_port_file(self._folder, index))
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                return await response.text() if response.status == 200 else None
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError):
            return None  # a child starting or restarting: its series are missing from this scrape

    def _own_metrics(self, answering: int) -> list[GaugeMetricFamily | CounterMetricFamily]:
        children = GaugeMetricFamily("shepherd_supervisor_processes", "Gateway processes, by state",
                                     labels=["state"])
        children.add_metric(["configured"], self._count)
        children.add_metric(["answering"], answering)
        restarts = CounterMetricFamily("shepherd_supervisor_restarts", "Gateway processes restarted after a crash")
        restarts.add_metric([], self._restarts)
        return [children, restarts]


def _split(limit: int, count: int) -> int:
    """A whole-gateway concurrency limit as each of `count` processes applies it (rounded up)."""
    return -(-limit // count) if limit > 0 else limit


def child_config(config: GatewayConfig, info: ChildInfo) -> GatewayConfig:
    """The config of child `info.index`: the supervisor's port, and the whole gateway's admission
    limits split among the processes. Rate limits and the per-key concurrency limit are split too, unless
    the mesh holds them in Redis for the whole fleet (then each process asks Redis, at the full limit).
    (The tenant limits are split where they are loaded: context.py.)"""
    admission, count = config.admission, info.count
    fleet_rates = config.mesh.redis_url is not None
    admission = replace(
        admission,
        max_concurrent_requests=_split(admission.max_concurrent_requests, count),
        queue_size=_split(admission.queue_size, count),
        per_key_max_concurrent_requests=admission.per_key_max_concurrent_requests if fleet_rates else _split(
            admission.per_key_max_concurrent_requests, count),
        rate_limit_tokens_per_second=admission.rate_limit_tokens_per_second / (1 if fleet_rates else count),
        per_key_rate_limit_tokens_per_second=admission.per_key_rate_limit_tokens_per_second / (
            1 if fleet_rates else count),
    )
    process = replace(config.process, child_index=info.index, local_channel_dir=info.folder)
    return replace(config, port=info.port, admission=admission, process=process)
