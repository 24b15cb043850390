"""Build the aiohttp application around an AppContext, and run it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shepherd.api.admin import add_admin_routes
from shepherd.api.admit import install_answer_started
from shepherd.api.conversations import add_conversation_routes
from shepherd.api.dashboard import add_dashboard_routes
from shepherd.api.inference import add_inference_routes
from shepherd.api.keys import CONTEXT
from shepherd.api.parse import add_parse_routes
from shepherd.api.responses import add_response_routes
from shepherd.api.tokenize import add_tokenizer_routes
from shepherd.api.utility import add_utility_routes, readiness_state
from shepherd.api.wasm import add_wasm_routes
from shepherd.assembly import checked
from shepherd.config import ConfigError, GatewayConfig
from shepherd.context import AppContext
from shepherd.exposure import bind_error, warn_if_open
from shepherd.gc_freeze import freeze_startup_heap, raise_young_threshold
from shepherd.http_server import GatewayRunner
from shepherd.kv.endpoints import ENDPOINT_LABEL, REPLAY_LABEL
from shepherd.middleware.cors import Cors
from shepherd.middleware.gateway import gateway_middleware
from shepherd.middleware.plugins import plugin_middleware
from shepherd.middleware.routed_worker import install_routed_worker_header
from shepherd.observability.metrics import Metrics
from shepherd.plugins.registry import PluginError
from shepherd.probe_port import ProbeListener
from shepherd.providers.startup import parse_external_provider
from shepherd.routers.common.keepalive import SSE_KEEPALIVE_SECS
from shepherd.supervisor import metrics_port_file
from shepherd.workers.spec import WorkerSpec, normalize_url
from shepherd.workers.worker import WorkerType

log = logging.getLogger("shepherd")


def build_app(context: AppContext) -> web.Application:
    config = context.config
    cors = Cors(config.cors_allowed_origins) if config.cors_allowed_origins else None
    middlewares = [gateway_middleware(context)]
    if context.plugins is not None:
        middlewares.append(plugin_middleware(context))  # inside: after auth, around the handler
    if cors is not None:
        middlewares.insert(0, cors.preflight)
    app = web.Application(middlewares=middlewares, client_max_size=config.max_payload_size)
    if cors is not None:
        cors.install(app)
    install_routed_worker_header(app, context)
    install_answer_started(app, context)
    app[CONTEXT] = context
    app[SSE_KEEPALIVE_SECS] = config.sse_keepalive_secs
    add_inference_routes(app)
    add_utility_routes(app)
    add_admin_routes(app)
    add_dashboard_routes(app)
    add_wasm_routes(app)
    add_parse_routes(app)
    add_tokenizer_routes(app)
    add_conversation_routes(app)
    add_response_routes(app)
    return app


def build_metrics_app(metrics: Metrics) -> web.Application:
    """The separate Prometheus listener: GET /metrics in the text exposition format."""

    async def scrape(request: web.Request) -> web.Response:
        body = await metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


def _ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    if not config.tls_cert_path or not config.tls_key_path:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_path, config.tls_key_path)
    return context


class Gateway:
    """A running gateway: start() binds the port and registers the startup workers."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = checked(config)
        self.context: AppContext | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.probes: ProbeListener | None = None  # --health-check-port

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        assert self._runner is not None
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        return self.config.port

    async def start(self) -> None:
        self.context = AppContext.create(self.config)
        try:
            await self.context.history.start()  # schema created or migrated before the first request
            if self.context.mcp is not None:
                await self.context.mcp.start()  # a required MCP server that cannot connect stops the launch
        except BaseException:
            await self.context.close()
            raise
        await self._load_plugins_file()
        app = build_app(self.context)
        # handler_cancellation: a client that disconnects cancels its handler at once, which
        # closes the upstream request so the engine stops generating for nobody.
        limits = self.config.limits
        self._runner = GatewayRunner(app, header_timeout=limits.header_read_timeout_secs,
                                     idle_timeout=limits.idle_connection_timeout_secs, handler_cancellation=True,
                                     access_log=None)
        await self._runner.setup()
        child = self.config.process.child_index is not None  # one of a supervisor's processes: a shared port
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=4096, reuse_address=True,
                           reuse_port=True if child else None, ssl_context=_ssl_context(self.config))
        try:
            await site.start()
        except OSError as exc:
            raise bind_error("gateway", self.config.host, self.config.port, exc) from None
        if self.context.metrics is not None:
            self._metrics_runner = GatewayRunner(build_metrics_app(self.context.metrics),
                                                 header_timeout=limits.header_read_timeout_secs,
                                                 idle_timeout=limits.idle_connection_timeout_secs, access_log=None)
            await self._metrics_runner.setup()
            # A supervisor's child answers its supervisor on a private loopback port; the supervisor
            # serves the merged metrics on --prometheus-port.
            host, port = ("127.0.0.1", 0) if child else (self.config.prometheus_host, self.config.prometheus_port)
            try:
                await web.TCPSite(self._metrics_runner, host, port, reuse_address=True).start()
            except OSError as exc:
                raise bind_error("metrics", host, port, exc) from None
            if child:
                self._announce_metrics_port()
        if self.config.health_check_port is not None:
            await self._start_probes(child)
        warn_if_open(self.config, log)
        self.context.start()
        key = self.config.worker_api_key
        specs = [WorkerSpec(url=normalize_url(url), api_key=key, labels=self._kv_event_labels(url))
                 for url in self.config.worker_urls]
        specs += [WorkerSpec(url=normalize_url(url), api_key=key, bootstrap_port=bootstrap_port,
                             worker_type=WorkerType.PREFILL, labels=self._kv_event_labels(url))
                  for url, bootstrap_port in self.config.prefill_urls]
        specs += [WorkerSpec(url=normalize_url(url), api_key=key, worker_type=WorkerType.DECODE)
                  for url in self.config.decode_urls]
        specs += [parse_external_provider(value).to_spec(os.environ) for value in self.config.external_providers]
        mesh = self.context.mesh
        for spec in specs:
            worker_id = self.context.manager.submit_add(spec)
            if mesh is not None:  # known to the fleet, without replacing what another instance wrote
                mesh.registry.announce_add(worker_id, spec, startup=True)
        scheme = "https" if self.config.tls_cert_path else "http"
        count = (len(self.config.worker_urls) + len(self.config.prefill_urls) + len(self.config.decode_urls)
                 + len(self.config.external_providers))
        log.info("shepherd listening on %s://%s:%d with %d startup workers", scheme, self.config.host, self.port,
                 count)

    async def _start_probes(self, child: bool) -> None:
        context, host, port = self.context, self.config.host, self.config.health_check_port
        assert context is not None and port is not None
        self.probes = ProbeListener(host, port, lambda: readiness_state(context), reuse_port=child,
                                    header_timeout=self.config.limits.header_read_timeout_secs)
        try:
            await self.probes.start()
        except OSError as exc:
            self.probes = None
            raise bind_error("probe", host, port, exc) from None

    def _kv_event_labels(self, url: str) -> dict[str, str]:
        """The kv_events_* labels --kv-events-endpoint gives a startup worker (kv/endpoints.py)."""
        for worker_url, endpoint, replay in self.config.kv_events_endpoints:
            if normalize_url(worker_url) == normalize_url(url):
                labels = {ENDPOINT_LABEL: endpoint}
                if replay is not None:
                    labels[REPLAY_LABEL] = replay
                return labels
        return {}

    def _announce_metrics_port(self) -> None:
        """Tell the supervisor where this child's metrics are (written whole, then renamed)."""
        process = self.config.process
        assert process.local_channel_dir is not None and process.child_index is not None
        path = metrics_port_file(process.local_channel_dir, process.child_index)
        with open(path + ".tmp", "w") as file:
            file.write(str(self.metrics_port))
        os.replace(path + ".tmp", path)

    async def _load_plugins_file(self) -> None:
        """Attach the plugins file's plugins before the port opens: no request is served without
        the plugins the operator configured (compiling still happens off the event loop)."""
        plugins = self.context.plugins if self.context is not None else None
        if plugins is None or plugins.config.plugins_file is None:
            return
        try:
            summary = await plugins.reload_file()
        except PluginError as exc:
            raise ConfigError(f"--wasm-plugins-file: {exc.message}") from None
        if summary["errors"]:
            problems = "; ".join(f"{e.get('name', e.get('index'))}: {e['message']}" for e in summary["errors"])
            raise ConfigError(f"--wasm-plugins-file: {problems}")
        log.info("attached %d plugins from %s", len(summary["added"]), plugins.config.plugins_file)

    async def drain(self) -> None:
        """Graceful shutdown: fail readiness, keep serving through the settle window, stop accepting,
        then give in-flight requests the rest of the grace period."""
        assert self.context is not None and self._runner is not None
        context, config = self.context, self.config
        context.draining = True
        deadline = time.monotonic() + config.shutdown_grace_period_secs
        log.info("draining: /readiness now answers 503; settling for %.1fs", config.settle_secs)
        await asyncio.sleep(config.settle_secs)
        context.closing = True
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            if server is not None:
                server.close()  # no new connections from here on
        while context.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if context.in_flight:
            log.warning("grace period over with %d requests still in flight", context.in_flight)
        else:
            log.info("all in-flight requests finished")

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_runner is None:
            return None
        for site in self._metrics_runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        return None

    async def stop(self) -> None:
        if self.probes is not None:
            await self.probes.stop()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.context is not None:
            await self.context.close()


async def serve(config: GatewayConfig) -> None:
    """Run until SIGINT or SIGTERM, then drain gracefully (a second signal stops at once)."""
    gateway = Gateway(config)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()  # a listener could not bind: release what was set up
        raise
    if config.gc_freeze:
        log.debug("froze %d startup objects out of the garbage collector's reach", freeze_startup_heap())
    raise_young_threshold()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        stop.clear()
        drain = asyncio.ensure_future(gateway.drain())
        second_signal = asyncio.ensure_future(stop.wait())
        await asyncio.wait({drain, second_signal}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drain, second_signal):
            task.cancel()
    finally:
        log.info("shutting down")
        await gateway.stop()
