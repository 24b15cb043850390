"""Registering a gRPC worker: detect its runtime, read its facts, make sure its model has a tokenizer.

The worker manager calls `probe` (retried until the worker answers) and then `prepare`, before the
worker becomes routable, so the data plane never sees a gRPC worker whose model it cannot tokenize.
The tokenizer comes from, in order: `--tokenizer-path`, `--model-path`, the worker's own
`tokenizer_path`/`model_path` when they are readable here, and finally the worker's `GetTokenizer`
stream.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile

import grpc
import orjson

from shepherd.config import GatewayConfig
from shepherd.kv.endpoints import endpoints_from_labels
from shepherd.tokenizer import bundle
from shepherd.tokenizer.files import TokenizerLoadError
from shepherd.tokenizer.registry import TokenizerEntry, TokenizerRegistry
from shepherd.workers.errors import ProbeError
from shepherd.workers.grpc_client import GrpcWorkerClient
from shepherd.workers.grpc_pool import GrpcClientPool
from shepherd.workers.grpc_probe import describe_grpc_worker
from shepherd.workers.metadata import WorkerMetadata
from shepherd.workers.spec import WorkerSpec
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.grpc")


class GrpcWorkerSetup:
    def __init__(self, config: GatewayConfig, pool: GrpcClientPool, tokenizers: TokenizerRegistry) -> None:
        self._config = config
        self._pool = pool
        self._tokenizers = tokenizers
        self._locks: dict[str, asyncio.Lock] = {}
        self._bundle_dirs: list[str] = []

    async def probe(self, spec: WorkerSpec) -> WorkerMetadata:
        client = await GrpcWorkerClient.connect(spec.url, spec.runtime_type, self._config.connect_timeout_secs)
        try:
            metadata = await describe_grpc_worker(client)
        except BaseException:
            await client.close()
            raise
        self._pool.put(client)
        return metadata

    async def prepare(self, worker: Worker) -> None:
        if worker.connection_mode == "http" and endpoints_from_labels(worker.labels) is not None:
            await self._prepare_for_kv_events(worker)
            return
        if worker.connection_mode != "grpc":
            return
        eos = _eos_ids(worker.labels.get("eos_token_ids", ""))
        try:
            for model in worker.model_ids:
                lock = self._locks.setdefault(model, asyncio.Lock())
                async with lock:
                    entry = self._tokenizers.get(model) or await self._load(model, worker)
                    entry.tokenizer.with_eos(eos)
        except BaseException:
            self._pool.discard(worker.url)
            raise

    async def _prepare_for_kv_events(self, worker: Worker) -> None:
        """An HTTP worker that publishes KV events: its model's tokenizer from local files (the gateway
        renders chat prompts into the ids the events describe). Without one the worker is still routed,
        by the approximate tree."""
        if self._config.disable_tokenizer_autoload:
            return
        for model in worker.model_ids:
            async with self._locks.setdefault(model, asyncio.Lock()):
                if self._tokenizers.get(model) is None:
                    entry, problems = await self._load_from_paths(model, worker)
                    if entry is None:
                        log.warning("%s publishes KV events but model %s has no tokenizer here (%s): it is routed "
                                    "by the approximate tree; pass --tokenizer-path", worker.url, model,
                                    "; ".join(problems) or "no --tokenizer-path or --model-path")

    async def _load_from_paths(self, model: str, worker: Worker) -> tuple[TokenizerEntry | None, list[str]]:
        config = self._config
        sources = [s for s in (config.tokenizer_path, config.model_path, worker.labels.get("tokenizer_path"),
                               worker.labels.get("model_path")) if s]
        problems: list[str] = []
        for source in dict.fromkeys(sources):
            try:
                entry = await self._tokenizers.load(model, source, config.chat_template, origin="path")
            except TokenizerLoadError as exc:
                problems.append(str(exc))
                continue
            log.info("tokenizer for %s loaded from %s", model, source)
            return entry, problems
        return None, problems

    async def _load(self, model: str, worker: Worker) -> TokenizerEntry:
        config = self._config
        if config.disable_tokenizer_autoload:
            raise ProbeError(f"no tokenizer for model {model!r}: tokenizer autoload is off "
                             "(--disable-tokenizer-autoload); register one with POST /v1/tokenizers")
        entry, problems = await self._load_from_paths(model, worker)
        if entry is not None:
            return entry
        client = self._pool.get(worker.url)
        if client is None:
            raise ProbeError(f"no gRPC client for {worker.url}")
        try:
            data = await client.get_tokenizer()
            directory = await asyncio.to_thread(tempfile.mkdtemp, prefix="shepherd-tokenizer-")
            self._bundle_dirs.append(directory)
            await asyncio.to_thread(bundle.unpack, data, directory)
            entry = await self._tokenizers.load(model, directory, config.chat_template, origin="worker")
        except (grpc.aio.AioRpcError, TokenizerLoadError, ValueError) as exc:
            detail = f"{exc.code().name} {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            problems.append(f"GetTokenizer from {worker.url}: {detail}")
            raise ProbeError(f"no tokenizer for model {model!r}: " + "; ".join(problems)) from None
        log.info("tokenizer for %s fetched from worker %s", model, worker.url)
        return entry

    async def close(self) -> None:
        await self._pool.close()
        for directory in self._bundle_dirs:
            await asyncio.to_thread(shutil.rmtree, directory, True)


def _eos_ids(text: str) -> list[int]:
    try:
        values = orjson.loads(text) if text else []
    except orjson.JSONDecodeError:
        return []
    return [v for v in values if isinstance(v, int)] if isinstance(values, list) else []
