"""A client for one gRPC engine worker: SGLang's scheduler service or vLLM's engine service.

Both services come from `smg-grpc-proto` and share RPC names and most message shapes, so the rest
of the gateway talks to a `GrpcWorkerClient` and looks at `runtime` only where they differ (request
building, and vLLM's delta counts in stream chunks). The runtime is detected by asking each service
for `HealthCheck` in turn: the one the server implements answers, the others are UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import json_format
from smg_grpc_proto import sglang_scheduler_pb2, sglang_scheduler_pb2_grpc, vllm_engine_pb2, vllm_engine_pb2_grpc
from smg_grpc_proto.generated import common_pb2

from shepherd.tokenizer.bundle import MAX_BUNDLE_BYTES, verify
from shepherd.workers.errors import ProbeError
from shepherd.workers.grpc_stream import GenerateStream, StreamChannel

log = logging.getLogger("shepherd.grpc")

_MAX_MESSAGE = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),  # ping a busy connection every 30 s; give up after 10 s of silence
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),  # the gateway retries on another worker itself
]


@dataclass(frozen=True)
class GrpcRuntime:
    name: str
    pb: ModuleType  # the service's message module
    stub: type
    counts_are_deltas: bool  # vLLM stream chunks carry deltas; SGLang's carry running totals
    service: str  # the full service name, for the Generate stream's path

    @property
    def generate_path(self) -> str:
        return f"/{self.service}/Generate"


SGLANG = GrpcRuntime("sglang", sglang_scheduler_pb2, sglang_scheduler_pb2_grpc.SglangSchedulerStub, False,
                     "sglang.grpc.scheduler.SglangScheduler")
VLLM = GrpcRuntime("vllm", vllm_engine_pb2, vllm_engine_pb2_grpc.VllmEngineStub, True, "vllm.grpc.engine.VllmEngine")
RUNTIMES: dict[str, GrpcRuntime] = {SGLANG.name: SGLANG, VLLM.name: VLLM}


class GrpcProbeError(ProbeError):
    """The worker did not answer as a gRPC engine should (yet)."""


def grpc_target(url: str) -> str:
    """`grpc://host:port` -> `host:port`."""
    target = url.removeprefix("grpc://").rstrip("/")
    if not target or "/" in target:
        raise ValueError(f"a gRPC worker URL must look like grpc://host:port, got {url!r}")
    return target


def open_channel(url: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(grpc_target(url), options=CHANNEL_OPTIONS)


async def grpc_health_check(url: str, rpc_timeout: float = 5.0) -> bool:
    """One-off HealthCheck of a gRPC worker (whichever engine service it serves) on its own channel."""
    try:
        client = await GrpcWorkerClient.connect(url, rpc_timeout=rpc_timeout)
    except (ProbeError, ValueError):
        return False
    await client.close()
    return True


class GrpcWorkerClient:
    def __init__(self, url: str, runtime: GrpcRuntime, channel: grpc.aio.Channel) -> None:
        self.url = url
        self.runtime = runtime
        self.pb = runtime.pb
        self.channel = channel
        self.stub: Any = runtime.stub(channel)
        self.streams = StreamChannel(grpc_target(url))  # Generate streams: see grpc_stream.py for why
        # Filled at registration from GetModelInfo: the model's own sampling defaults.
        self.default_sampling: dict[str, Any] = {}
        self.weight_version = "default"

    @classmethod
    async def connect(cls, url: str, runtime_hint: str | None = None, rpc_timeout: float = 5.0) -> GrpcWorkerClient:
        """Open a channel and find which engine service answers. Raises GrpcProbeError."""
        channel = open_channel(url)
        candidates = [RUNTIMES[runtime_hint]] if runtime_hint in RUNTIMES else list(RUNTIMES.values())
        problems: list[str] = []
        try:
            for runtime in candidates:
                client = cls(url, runtime, channel)
                try:
                    healthy, message = await client.health_check(rpc_timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                        problems.append(f"no {runtime.name} service")
                        continue
                    raise GrpcProbeError(f"{url} HealthCheck failed: {exc.code().name} {exc.details()}") from None
                if not healthy:
                    raise GrpcProbeError(f"{url} ({runtime.name}) reports unhealthy: {message}")
                return client
        except BaseException:
            await channel.close()
            raise
        await channel.close()
        raise GrpcProbeError(f"{url} serves no known engine service ({'; '.join(problems)})")

    async def health_check(self, rpc_timeout: float = 5.0) -> tuple[bool, str]:
        response = await self.stub.HealthCheck(self.pb.HealthCheckRequest(), timeout=rpc_timeout)
        return bool(response.healthy), str(response.message)

    async def is_healthy(self, rpc_timeout: float = 5.0) -> bool:
        try:
            healthy, _ = await self.health_check(rpc_timeout)
            return healthy
        except grpc.aio.AioRpcError:
            return False

    async def model_info(self, rpc_timeout: float = 10.0) -> Any:
        return await self.stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=rpc_timeout)

    async def server_info(self, rpc_timeout: float = 10.0) -> Any:
        return await self.stub.GetServerInfo(self.pb.GetServerInfoRequest(), timeout=rpc_timeout)

    async def get_loads(self, rpc_timeout: float = 5.0) -> dict[str, Any]:
        response = await self.stub.GetLoads(self.pb.GetLoadsRequest(), timeout=rpc_timeout)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def generate(self, request: Any, rpc_timeout: float | None = None, api_key: str | None = None) -> GenerateStream:
        return self.streams.open(self.runtime.generate_path, request.SerializeToString(), rpc_timeout,
                                 _credentials(api_key), self.pb.GenerateResponse.FromString)

    async def embed(self, request_id: str, input_ids: list[int], text: str, rpc_timeout: float | None = None,
                    api_key: str | None = None) -> tuple[list[float], int]:
        """(embedding, prompt tokens) of one tokenized input; AioRpcError as the worker answered."""
        tokenized = self.pb.TokenizedInput(original_text=text, input_ids=input_ids)
        response = await self.stub.Embed(self.pb.EmbedRequest(request_id=request_id, tokenized=tokenized),
                                         timeout=rpc_timeout, metadata=_credentials(api_key))
        return list(response.embedding), int(response.prompt_tokens) or len(input_ids)

    async def abort(self, request_id: str, reason: str = "", rpc_timeout: float = 5.0,
                    api_key: str | None = None) -> None:
        if self.runtime is VLLM:
            request = self.pb.AbortRequest(request_ids=[request_id])
        else:
            request = self.pb.AbortRequest(request_id=request_id, reason=reason)
        await self.stub.Abort(request, timeout=rpc_timeout, metadata=_credentials(api_key))

    async def flush_cache(self, rpc_timeout: float = 45.0) -> bool:
        request = common_pb2.FlushCacheRequest(timeout_s=rpc_timeout - 5)
        response = await self.stub.FlushCache(request, timeout=rpc_timeout)
        return bool(response.success)

    async def get_tokenizer(self, rpc_timeout: float = 120.0) -> bytes:
        """The worker's tokenizer bundle (a zip), checked against its SHA-256."""
        data = bytearray()
        digest = ""
        async for chunk in self.stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=rpc_timeout):
            data += chunk.data
            if len(data) > MAX_BUNDLE_BYTES:
                raise ValueError("the tokenizer bundle is larger than 512 MiB")
            digest = chunk.sha256 or digest
        verify(bytes(data), digest)
        log.info("fetched the tokenizer bundle of %s (%d bytes)", self.url, len(data))
        return bytes(data)

    async def close(self) -> None:
        await self.streams.close()
        await self.channel.close()


def _credentials(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """The worker's API key as gRPC metadata, the way engines behind an auth proxy expect it."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else None
