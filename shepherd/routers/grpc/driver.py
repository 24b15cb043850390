"""Walking a Generate stream: each message goes to its choice's decoder, then to the response's sink.

The same walk serves chat, completions and `/generate`; only the sink (how text becomes frames)
differs. Non-streaming requests collect the Completes instead, one per choice, in arrival order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from shepherd.errors import GatewayError
from shepherd.routers.common.relay import failure
from shepherd.routers.common.retry import RETRYABLE_STATUSES
from shepherd.routers.grpc.choices import Choice
from shepherd.routers.grpc.errors import worker_error
from shepherd.routers.grpc.execution import EngineCall
from shepherd.routers.grpc.sse import FrameBuffer


class ChoiceSink(Protocol):
    out: FrameBuffer  # where text() and finish() put their frames; the walk flushes it per batch

    async def text(self, choice: Choice, text: str, token_ids: Sequence[int], logprobs: Any | None) -> None:
        """New text of a choice (maybe empty), the ids it came from and their logprobs message (if any).

        `choice.decoder.kept` says how many of the ids belong to the answer."""
        ...

    async def finish(self, choice: Choice) -> None:
        """The choice ended; `finish_reason` and `matched_stop` are set."""
        ...


async def drive(engine: EngineCall, first: Any, choices: Sequence[Choice], sink: ChoiceSink) -> None:
    """Stream every choice to the sink until all have finished. Raises AioRpcError mid-stream.

    Messages are taken in batches: the one awaited and every one that arrived with it. A choice's
    chunks that follow each other in a batch are decoded together into one frame, and a batch's
    frames go out in one write before the next wait, so a lone message is never held back and a
    reader that fell behind the engine catches up in one write instead of one per message. The
    caller flushes the last batch (with its closing frames)."""
    deltas = engine.counts_are_deltas
    remaining = len(choices)
    engine_done = 0
    batch = [first, *engine.ready()]
    while True:
        position = 0
        while position < len(batch):
            message = batch[position]
            position += 1
            kind = message.WhichOneof("response")
            if kind == "chunk":
                chunk = message.chunk
                choice = choices[chunk.index]
                if not choice.done:
                    logprobs = chunk.output_logprobs if chunk.HasField("output_logprobs") else None
                    ids: Sequence[int] = chunk.token_ids
                    if logprobs is None:  # this choice's chunks right behind it: one decode, one frame
                        while position < len(batch) and _plain_chunk_of(batch[position], chunk.index):
                            choice.count_chunk(chunk, deltas)
                            chunk = batch[position].chunk
                            position += 1
                            ids = [*ids, *chunk.token_ids]
                    choice.count_chunk(chunk, deltas)
                    await sink.text(choice, choice.decoder.feed(ids), ids, logprobs)
                    if choice.decoder.stopped:  # a stop the engine does not know about (a multi-token string)
                        choice.stop_locally()
                        await sink.finish(choice)
                        remaining -= 1
            elif kind == "complete":
                complete = message.complete
                engine_done += 1
                choice = choices[complete.index]
                if not choice.done:
                    if not choice.saw_chunk:  # the whole answer came in the Complete
                        ids = complete.output_ids
                        await sink.text(choice, choice.decoder.feed(ids), ids,
                                        complete.output_logprobs if complete.HasField("output_logprobs") else None)
                    choice.count_complete(complete, deltas)
                    await sink.text(choice, choice.decoder.flush(), (), None)
                    choice.finish(complete)
                    await sink.finish(choice)
                    remaining -= 1
            if remaining == 0:
                # Every choice ended. If the gateway stopped one before the engine did, it is aborted.
                engine.finished = engine_done == len(choices)
                return
        await sink.out.flush()
        message = await engine.read()
        if message is None:
            break
        batch = [message, *engine.ready()]
    for choice in choices:  # the stream ended without a Complete for these
        if not choice.done:
            await sink.text(choice, choice.decoder.flush(), (), None)
            choice.finish_reason, choice.done = "stop", True
            await sink.finish(choice)


def _plain_chunk_of(message: Any, index: int) -> bool:
    """A chunk of choice `index` without logprobs (whose entries would have to be merged too)."""
    return (message.WhichOneof("response") == "chunk" and message.chunk.index == index
            and not message.chunk.HasField("output_logprobs"))


async def collect(engine: EngineCall, first: Any, n: int) -> list[Any]:
    """The n Completes of a non-streaming request, in arrival order."""
    completes: list[Any] = []
    message = first
    try:
        while message is not None:
            if message.WhichOneof("response") == "complete":
                completes.append(message.complete)
                if len(completes) == n:
                    engine.finished = True
                    break
            message = await engine.read()
    except grpc.aio.AioRpcError as exc:
        # Nothing reached the client yet, so (as for an HTTP body that breaks off) another worker may
        # answer instead where attempts remain and the status is one worth retrying.
        engine.broke_off()
        status = worker_error(exc, engine.worker.url).status
        message = f"Worker {engine.worker.url} failed mid-answer: {exc.code().name} {exc.details()}"
        if status in RETRYABLE_STATUSES:
            raise failure(engine.final, status, "worker_stream_failed", message) from None
        raise GatewayError(status, "worker_stream_failed", message) from None
    if not completes:
        engine.broke_off()
        raise failure(engine.final, 502, "worker_stream_failed", f"Worker {engine.worker.url} sent no answer")
    return completes


def decode_complete(choice: Choice, complete: Any) -> tuple[str, int]:
    """A whole answer's text (stops applied) and how many of its ids belong to it."""
    choice.count_complete(complete, deltas=False)
    text = choice.decoder.feed(complete.output_ids)
    kept = choice.decoder.kept
    text += choice.decoder.flush()
    choice.finish(complete)
    return text, kept
