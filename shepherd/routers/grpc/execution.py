"""Open a Generate stream on a gRPC worker: one attempt of the common lifecycle.

The stream counts as an Attempt like any HTTP exchange (load, breaker verdict, attempt metrics): the
first message is the worker's answer; a gRPC status before it is classified like an HTTP status
(UNAVAILABLE or DEADLINE_EXCEEDED: no answer; RESOURCE_EXHAUSTED: busy; INTERNAL: a server error),
and a failure before the first message is retried on another worker by the lifecycle.
A stream that is left before it finished (the client went away, an error) is cancelled and the
worker is sent `Abort(request_id)`, so the engine stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from shepherd.routers.common.attempt import Attempt
from shepherd.routers.common.execution import Execution
from shepherd.routers.common.relay import failure
from shepherd.routers.common.retry import RETRYABLE_STATUSES
from shepherd.routers.grpc.errors import worker_error
from shepherd.routers.grpc.prepare import Prepared
from shepherd.routers.grpc.request_builder import build_generate_request
from shepherd.workers.grpc_client import GrpcWorkerClient
from shepherd.workers.grpc_pool import GrpcClientPool
from shepherd.workers.grpc_stream import GenerateStream
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.grpc")

# Statuses that mean the worker gave no answer at all (a transport failure, for the breaker).
_NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN})


class EngineCall:
    """One open Generate stream. `close()` must run once, whatever happened."""

    __slots__ = ("attempt", "client", "call", "request_id", "final", "_finished", "_closed", "_background")

    def __init__(self, attempt: Attempt, client: GrpcWorkerClient, call: GenerateStream, request_id: str,
                 background: set[asyncio.Task[None]], final: bool = True) -> None:
        self.attempt = attempt
        self.final = final  # the request's last attempt: a failure is the client's answer, not a retry
        self.client = client
        self.call = call
        self.request_id = request_id
        self._finished = False
        self._closed = False
        self._background = background

    @property
    def finished(self) -> bool:
        """Every answer arrived: nothing to abort."""
        return self._finished

    @finished.setter
    def finished(self, value: bool) -> None:
        self._finished = value
        self.attempt.outcome.complete = value

    def nothing_to_abort(self) -> None:
        self._finished = True

    @property
    def worker(self) -> Worker:
        return self.attempt.worker

    @property
    def counts_are_deltas(self) -> bool:
        return self.client.runtime.counts_are_deltas

    async def read(self) -> Any | None:
        """The next message; None at the end of the stream. Raises AioRpcError."""
        message = await self.call.read()
        self.attempt.progressed()  # a token or the end of the answer
        if message is grpc.aio.EOF:
            self.finished = True
            return None
        return message

    def ready(self) -> list[Any]:
        """The messages that arrived already (maybe none): the caller handles them with the one it read."""
        return self.call.ready()

    def broke_off(self) -> None:
        """The stream failed after it started: the worker's failure."""
        self.attempt.failed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.finished:
            self.call.cancel()
            task = asyncio.ensure_future(self._abort())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self.attempt.close()

    async def _abort(self) -> None:
        try:
            await self.client.abort(self.request_id, "Stream dropped", api_key=self.worker.api_key)
        except grpc.aio.AioRpcError as exc:
            log.debug("abort of %s on %s failed: %s", self.request_id, self.worker.url, exc.code().name)


class GrpcExecutor:
    def __init__(self, pool: GrpcClientPool) -> None:
        self._pool = pool
        self.background: set[asyncio.Task[None]] = set()  # aborts in flight

    async def open(self, execution: Execution[Worker], worker: Worker, request_id: str, prepared: Prepared,
                   final: bool) -> tuple[EngineCall, Any]:
        """An open stream and its first message; RetryableFailure (or GatewayError when final) otherwise."""
        client = self._pool.get(worker.url)
        if client is None:  # removed while we chose it
            raise failure(final, 503, "no_available_workers", f"Worker {worker.url} is going away")
        request = build_generate_request(client, request_id, prepared.input_ids, prepared.text, prepared.sampling)
        attempt = execution.attempt(worker)
        try:
            call = client.generate(request, execution.remaining(), api_key=worker.api_key)
        except BaseException:
            attempt.close()
            raise
        engine = EngineCall(attempt, client, call, request_id, self.background, final)
        try:
            first = await engine.read()
        except grpc.aio.AioRpcError as exc:
            engine.nothing_to_abort()  # it failed: the engine holds nothing
            error = worker_error(exc, worker.url)
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                attempt.unreachable()
            elif exc.code() in _NO_ANSWER:
                attempt.failed()
            else:
                attempt.answered(error.status)
            engine.close()
            if error.status in RETRYABLE_STATUSES:
                raise failure(final, error.status, error.code, error.message) from None
            raise error from None
        except asyncio.CancelledError:
            attempt.client_left()
            engine.close()
            raise
        except BaseException:
            engine.close()
            raise
        if first is None:
            attempt.failed()
            engine.close()
            raise failure(final, 502, "worker_stream_failed", f"Worker {worker.url} ended the stream without an answer")
        attempt.answered(200)
        return engine, first

    async def close(self) -> None:
        await asyncio.gather(*self.background, return_exceptions=True)

