"""AppContext: every long-lived object of one gateway, built once and passed around."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from shepherd.config import GatewayConfig
from shepherd.discovery import Discovery
from shepherd.kv.index import KvIndex
from shepherd.kv.subscriber import KvEventSubscriptions
from shepherd.mesh.mesh import Mesh
from shepherd.middleware.admission import AdmissionController
from shepherd.middleware.auth import Authenticator
from shepherd.middleware.body_budget import BodyBudget
from shepherd.middleware.priority import load_priority_plan
from shepherd.middleware.tenant import TenantResolver, key_tenants
from shepherd.middleware.tenant_limits import load_tenant_limits
from shepherd.observability.live_stats import LiveStats
from shepherd.observability.metrics import DURATION_BUCKETS, LiveState, Metrics
from shepherd.observability.tracing import Tracing
from shepherd.parsers.profiles import ParserProfiles
from shepherd.plugins.registry import PluginRegistry
from shepherd.policies.factory import LOAD_AWARE_POLICIES
from shepherd.policies.precise_cache import PreciseCachePolicy
from shepherd.policies.registry import PolicyRegistry
from shepherd.providers.refresh import ModelRefresher
from shepherd.recording.recorder import TrafficRecorder
from shepherd.routers.base import Router
from shepherd.routers.external.router import ExternalRouter
from shepherd.routers.grpc.parsed_output import ParserOutputFactory
from shepherd.routers.grpc.wiring import GrpcComponents
from shepherd.routers.http.pd import PdRouter
from shepherd.routers.http.regular import HttpRouter
from shepherd.routers.manager import RouterManager
from shepherd.storage.base import HistoryStorage
from shepherd.storage.factory import create_history
from shepherd.storage.scoped import TenantHistory
from shepherd.transport.base import Transport
from shepherd.transport.lean import LeanTransport
from shepherd.transport.provider import ProviderTransport, TlsSettings
from shepherd.workers.health import HealthChecker
from shepherd.workers.http_client import create_upstream_session
from shepherd.workers.liveness import LivenessSweeper
from shepherd.workers.load_monitor import LoadMonitor
from shepherd.workers.manager import WorkerManager
from shepherd.workers.registry import RegistryEvent, WorkerRegistry
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.context")


@dataclass
class Transports:
    """What carries requests to workers: the lean client for local engines, the full one for providers."""

    local: Transport
    providers: Transport
    provider_session: aiohttp.ClientSession | None = None  # providers' model discovery, same egress settings

    @classmethod
    def real(cls, config: GatewayConfig) -> Transports:
        providers = ProviderTransport(connect_timeout=config.connect_timeout_secs,
                                      idle_timeout=config.upstream_pool_idle_timeout_secs,
                                      tls=TlsSettings(config.ca_cert_paths, config.client_cert_path,
                                                      config.client_key_path))
        local = LeanTransport(connect_timeout=config.connect_timeout_secs,
                              idle_timeout=config.upstream_pool_idle_timeout_secs)
        return cls(local, providers, providers.session)

    async def close(self) -> None:
        await self.local.close()
        await self.providers.close()


def _wants_kv_events(config: GatewayConfig) -> bool:
    """Subscribe to the engines' KV events when a configured policy reads them."""
    names = {config.policy, config.prefill_policy, config.decode_policy}
    return config.policy_options.kv_index != "none" and PreciseCachePolicy.name in names
if TYPE_CHECKING:
    from shepherd.mcp.service import McpService


@dataclass
class AppContext:
    config: GatewayConfig
    registry: WorkerRegistry
    policies: PolicyRegistry
    session: aiohttp.ClientSession  # control-plane calls: probes, fan-outs
    transports: Transports  # local engines' lean client, providers' full client
    manager: WorkerManager
    load_monitor: LoadMonitor
    wedges: LivenessSweeper  # wedge and stale judgements
    health: HealthChecker
    admission: AdmissionController
    http_router: HttpRouter
    router: RouterManager  # what the API layer calls
    refresher: ModelRefresher  # providers' model lists, re-read on a miss
    auth: Authenticator
    tenants: TenantResolver  # serving requests' tenant identity
    metrics: Metrics | None
    tracing: Tracing | None
    grpc: GrpcComponents  # tokenizers, gRPC clients and the gRPC router
    bodies: BodyBudget  # request-body bytes held across all requests
    history: HistoryStorage  # chat history (responses, conversations); Gateway.start opens it
    discovery: Discovery | None = None  # Kubernetes or file discovery, when configured
    started_at: float = field(default_factory=time.time)
    live_stats: LiveStats = field(default_factory=LiveStats)  # the status page's last minutes
    recorder: TrafficRecorder | None = None  # --record-traffic
    in_flight: int = 0  # requests being handled, for graceful shutdown
    draining: bool = False  # set on SIGTERM: /readiness answers 503
    closing: bool = field(default=False)  # past the settle window: new requests are refused
    plugins: PluginRegistry | None = None  # WASM plugins, with --enable-wasm
    kv_index: KvIndex | None = None  # blocks the engines hold, from their KV events (precise_cache)
    kv_events: KvEventSubscriptions | None = None  # one SubscribeKvEvents stream per gRPC worker
    pd_policies: tuple[PolicyRegistry, ...] = ()  # with PD: the prefill and decode policies
    mcp: McpService | None = None  # --mcp-config-path, or made on first use: MCP servers and the tool loop
    mesh: Mesh | None = None  # shared state with other processes and instances (--mesh-redis-url, --workers)
    parser_profiles: ParserProfiles = field(default_factory=ParserProfiles)  # --model-alias vendor parsers

    def mcp_service(self) -> McpService:
        """The MCP service; a gateway without --mcp-config-path makes one (no configured servers, the
        default limits for per-request servers) when a request first names an MCP server."""
        if self.mcp is None:
            from shepherd.mcp.config import McpConfig
            from shepherd.mcp.service import McpService
            self.mcp = McpService(McpConfig(), self.metrics)
        return self.mcp

    @classmethod
    def create(cls, config: GatewayConfig, transports: Transports | None = None) -> AppContext:
        """Build the context; must run inside the event loop that will serve it. `transports` replaces
        the real HTTP clients (tests pass fake ones)."""
        registry = WorkerRegistry(dict(config.model_aliases))
        if config.mesh.redis_url is not None:  # sticky keys agree across instances
            config = dataclasses.replace(config, policy_options=dataclasses.replace(
                config.policy_options, agree_across_instances=True))
        kv_index = KvIndex(config.policy_options.block_size) if _wants_kv_events(config) else None
        policies = PolicyRegistry(config.policy, config.policy_options, registry, kv_index)
        registry.subscribe(policies.on_registry_event)
        session = create_upstream_session(config)
        transports = transports or Transports.real(config)
        tenant_limits = (load_tenant_limits(config.admission.tenant_rate_limit_config)
                         if config.admission.tenant_rate_limit_enabled and config.admission.tenant_rate_limit_config
                         else None)
        if tenant_limits is not None and config.mesh.redis_url is None and config.process.workers > 1:
            tenant_limits = tenant_limits.split(config.process.workers)  # no fleet: each process takes its share
        plan = (load_priority_plan(config.admission.priority_scheduler_config,
                                   config.admission.priority_scheduler_default_max_class)
                if config.admission.priority_scheduler_enabled else None)
        metrics = None if config.disable_metrics else Metrics(
            config.prometheus_duration_buckets or DURATION_BUCKETS, config.tenant_metric_top_n,
            tenants=[*key_tenants(config.auth).values(), *(tenant_limits.tenants if tenant_limits else ()),
                     *(plan.tenant_max_class if plan else ())])
        tracing = Tracing(config.otlp_traces_endpoint, config.trace_sample_ratio) if config.enable_trace else None
        http_router = HttpRouter(config, registry, policies, transports.local, metrics, tracing)
        default_router: Router = http_router
        pd_policies: tuple[PolicyRegistry, ...] = ()
        if config.pd_disaggregation:
            prefill_policies = PolicyRegistry(config.prefill_policy or config.policy, config.policy_options, registry,
                                              kv_index)
            decode_policies = PolicyRegistry(config.decode_policy or config.policy, config.policy_options, registry,
                                             kv_index)
            pd_policies = (prefill_policies, decode_policies)
            for side in pd_policies:
                registry.subscribe(side.on_registry_event)
            default_router = PdRouter(config, registry, prefill_policies, decode_policies, transports.local, metrics,
                                      tracing)
        router = RouterManager(registry, default_router)
        provider_session = transports.provider_session or session
        manager = WorkerManager(config, registry, session, provider_session)
        if metrics is not None:
            manager.on_exclusion = lambda reason: metrics.worker_exclusions(reason).inc()
        refresher = ModelRefresher(registry, provider_session, config.external_model_refresh_secs)
        router.register("external", ExternalRouter(config, registry, policies, transports.providers, refresher,
                                                   metrics, tracing))
        health = HealthChecker(config.health, registry, session, remove=manager.submit_remove)
        if metrics is not None:
            registry.subscribe(_breaker_metrics(metrics))
            health.on_result = lambda worker, ok: metrics.health_checks(
                worker.worker_type.value, "success" if ok else "failure").inc()
        # After the metrics' breaker listener: the mesh chains its own behind it.
        mesh = Mesh.create(config, registry, manager, policies)
        if mesh is not None:
            health.on_transition = mesh.on_health_transition
            health.remove = mesh.remove_worker
            manager.on_stall = lambda worker: mesh.on_health_transition(worker, False)  # stalled: dead to all
        fleet = mesh.limiter.take if mesh is not None and mesh.limiter is not None else None
        parser_profiles = ParserProfiles(config.model_aliases)
        context = cls(
            config=config,
            registry=registry,
            policies=policies,
            session=session,
            transports=transports,
            manager=manager,
            load_monitor=LoadMonitor(registry, session, config.load_monitor_interval_secs),
            wedges=LivenessSweeper(registry.all, config.worker_wedge_secs, config.worker_stale_secs),
            health=health,
            admission=AdmissionController(config.admission, *_admission_counters(metrics), fleet=fleet,
                                          tenant_limits=tenant_limits, plan=plan,
                                          count_scheduled=_scheduler_counter(metrics),
                                          fleet_limits=mesh.limiter if mesh is not None else None),
            http_router=http_router,
            router=router,
            refresher=refresher,
            auth=Authenticator(config.auth, session),
            tenants=TenantResolver(config.auth),
            metrics=metrics,
            tracing=tracing,
            grpc=GrpcComponents.install(config, registry, policies, manager, router,
                                        ParserOutputFactory(config.tool_call_parser, config.reasoning_parser,
                                                            parser_profiles),
                                        metrics, tracing),
            bodies=BodyBudget(config.limits.max_buffered_request_bytes),
            plugins=PluginRegistry(config.wasm, metrics) if config.wasm.enabled else None,
            history=create_history(config.history),
            mesh=mesh,
            parser_profiles=parser_profiles,
        )
        context.discovery = Discovery.from_config(config, manager, registry)
        context.pd_policies = pd_policies
        if kv_index is not None:
            context.kv_index = kv_index
            context.kv_events = KvEventSubscriptions(kv_index, context.grpc.pool.get)
            registry.subscribe(context.kv_events.on_registry_event)
            http_router.routing_tokenizers = context.grpc.tokenizers
        if config.mcp_config_path:  # the mcp SDK is a heavy import: only gateways that use it pay for it
            from shepherd.mcp.config import load_mcp_config
            from shepherd.mcp.service import McpService
            context.mcp = McpService(load_mcp_config(config.mcp_config_path), metrics)
        if config.recording.directory:
            context.recorder = TrafficRecorder(config.recording, config.policy_options.routing_key_headers)
        context.health.register_probe("grpc", context.grpc.health)
        context.load_monitor.register_source("grpc", context.grpc.load_rows)
        if metrics is not None:
            metrics.attach(LiveState(
                workers=registry.all, serves=registry.serves, requests_in_flight=lambda: context.in_flight,
                admission_queue_depth=lambda: context.admission.queue_depth,
                admission_in_flight=lambda: context.admission.in_flight, cache_trees=policies.cache_trees,
                mesh=(lambda: (mesh.status.connected, mesh.status.errors)) if mesh is not None else None,
                tokenizer_cache=context.grpc.tokenizers.cache_totals))
        return context

    def history_for(self, tenant: str | None) -> HistoryStorage:
        """The history a request of `tenant` reads and writes: with tenancy configured, that tenant's view."""
        if tenant is None or not self.tenants.scopes_history:
            return self.history
        return TenantHistory(self.history, tenant)

    def all_policy_registries(self) -> list[PolicyRegistry]:
        """The regular path's policies and, with PD, the prefill and decode ones."""
        return [self.policies, *self.pd_policies]

    def start(self) -> None:
        """Start the control plane's background tasks."""
        for policies in self.all_policy_registries():  # PD's sides expire their pins too
            policies.start()
        self.health.start()
        self.wedges.start()
        if self.recorder is not None:
            self.recorder.start()
        config = self.config
        polling = not config.disable_load_monitoring or config.policy in LOAD_AWARE_POLICIES
        if polling:
            self.load_monitor.start()
        stale = config.worker_stale_secs
        if self.kv_events is not None and stale > 0 and (not polling or config.load_monitor_interval_secs >= stale):
            log.warning("--worker-stale-secs %g: %s, so an idle gRPC worker whose KV events carry load records can "
                        "be judged stale between health checks; keep it above the poll interval", stale,
                        "load polling is off" if not polling else
                        f"the load monitor polls only every {config.load_monitor_interval_secs:g}s")
        if self.discovery is not None:
            self.discovery.start()
        if self.mesh is not None:
            self.mesh.start()

    async def close(self) -> None:
        if self.mesh is not None:
            await self.mesh.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.kv_events is not None:
            await self.kv_events.stop()
        if self.recorder is not None:
            await self.recorder.close()
        await self.health.stop()
        await self.load_monitor.stop()
        await self.wedges.stop()
        for policies in self.all_policy_registries():
            await policies.stop()
        await self.manager.close()
        await self.grpc.close()
        await self.refresher.close()
        if self.plugins is not None:
            self.plugins.close()
        await self.history.close()
        if self.mcp is not None:
            await self.mcp.close()
        if self.tracing is not None:
            self.tracing.shutdown()
        await self.transports.close()
        await self.session.close()



def _admission_counters(metrics: Metrics | None) -> tuple[Callable[[str], None] | None, Callable[[str], None] | None]:
    """(rate-limit decision, rejection) counters for the admission controller."""
    if metrics is None:
        return None, None
    return (lambda result: metrics.rate_limit(result).inc()), (lambda reason: metrics.admission_rejected(reason).inc())


def _scheduler_counter(metrics: Metrics | None) -> Callable[[str, str | None, str], None] | None:
    """Count every priority-scheduler outcome by class and (bounded) tenant."""
    if metrics is None:
        return None
    return lambda klass, tenant, outcome: metrics.scheduler_requests(
        klass, metrics.tenant_label(tenant or "anonymous"), outcome).inc()


def _breaker_metrics(metrics: Metrics):  # type: ignore[no-untyped-def]
    """Count every circuit-breaker transition of every registered worker."""

    def subscribe(event: RegistryEvent, worker: Worker) -> None:
        if event is RegistryEvent.ADDED and worker.breaker is not None:
            url = worker.url
            worker.breaker.listener = lambda old, new: metrics.cb_transitions(
                url, old.name.lower(), new.name.lower()).inc()

    return subscribe
