"""The Generate stream client (workers/grpc_stream.py) against a real grpc.aio server in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from smg_grpc_proto import sglang_scheduler_pb2 as pb

from shepherd.testing import free_ports
from shepherd.workers.grpc_stream import StreamChannel

PATH = "/sglang.grpc.scheduler.SglangScheduler/Generate"


class _Engine:
    """Generate's behaviour is picked by the request id; what the server saw is kept."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.deadlines: list[float | None] = []
        self.cancelled = asyncio.Event()
        self.sizes: list[int] = []

    async def generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.metadata.append({key: value for key, value in context.invocation_metadata() or ()})
        self.deadlines.append(context.time_remaining())
        self.sizes.append(len(request.tokenized.input_ids))
        kind = request.request_id
        if kind == "refuse":  # trailers-only: no message at all
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad stop 100% sure")
        for i in range(int(request.sampling_params.max_new_tokens)):
            yield pb.GenerateResponse(request_id=kind, chunk=pb.GenerateStreamChunk(token_ids=[100_000 + i] * 300))
        if kind == "break":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of KV")
        if kind == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        yield pb.GenerateResponse(request_id=kind, complete=pb.GenerateComplete(finish_reason="stop"))


@pytest.fixture()
async def server() -> AsyncIterator[tuple[_Engine, str]]:
    engine = _Engine()
    handler = grpc.method_handlers_generic_handler("sglang.grpc.scheduler.SglangScheduler", {
        "Generate": grpc.unary_stream_rpc_method_handler(engine.generate, pb.GenerateRequest.FromString,
                                                         pb.GenerateResponse.SerializeToString)})
    aio_server = grpc.aio.server()
    aio_server.add_generic_rpc_handlers((handler,))
    port = aio_server.add_insecure_port("127.0.0.1:0")
    await aio_server.start()
    yield engine, f"127.0.0.1:{port}"
    await aio_server.stop(0)


def _request(kind: str, tokens: int, prompt: int = 3) -> bytes:
    return pb.GenerateRequest(request_id=kind, tokenized=pb.TokenizedInput(input_ids=[7] * prompt),
                              sampling_params=pb.SamplingParams(max_new_tokens=tokens), stream=True).SerializeToString()


def _kinds(messages: list[Any]) -> Iterator[str]:
    return (m.WhichOneof("response") for m in messages)


async def _read_all(stream: Any) -> list[Any]:
    messages = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        messages += [message, *stream.ready()]
    return messages


async def test_messages_arrive_in_order_with_metadata_and_deadline(server: tuple[_Engine, str]) -> None:
    engine, target = server
    channel = StreamChannel(target)
    try:
        # 1,500 chunks of ~900 bytes each: more than a stream's window, so it must be handed back as read.
        streams = [channel.open(PATH, _request("ok", 1500), 30, [("authorization", "Bearer k")],
                                pb.GenerateResponse.FromString) for _ in range(3)]
        results = await asyncio.gather(*(_read_all(s) for s in streams))
    finally:
        await channel.close()
    for messages in results:
        assert list(_kinds(messages)) == ["chunk"] * 1500 + ["complete"]
        assert [m.chunk.token_ids[0] for m in messages[:-1]] == [100_000 + i for i in range(1500)]
    assert engine.metadata[0]["authorization"] == "Bearer k"
    assert engine.deadlines[0] is not None and 20 < engine.deadlines[0] <= 30


async def test_a_prompt_larger_than_the_send_window_goes_out_whole(server: tuple[_Engine, str]) -> None:
    engine, target = server
    channel = StreamChannel(target)
    try:
        messages = await _read_all(channel.open(PATH, _request("ok", 1, prompt=100_000), None, None,
                                                pb.GenerateResponse.FromString))
    finally:
        await channel.close()
    assert list(_kinds(messages)) == ["chunk", "complete"]
    assert engine.sizes == [100_000]


@pytest.mark.parametrize(("kind", "tokens", "code", "details"), [
    ("refuse", 0, grpc.StatusCode.INVALID_ARGUMENT, "bad stop 100% sure"),  # trailers-only, percent-encoded
    ("break", 2, grpc.StatusCode.RESOURCE_EXHAUSTED, "out of KV"),  # after two messages
])
async def test_the_servers_status_is_the_error(server: tuple[_Engine, str], kind: str, tokens: int,
                                               code: grpc.StatusCode, details: str) -> None:
    _, target = server
    channel = StreamChannel(target)
    stream = channel.open(PATH, _request(kind, tokens), 10, None, pb.GenerateResponse.FromString)
    got = 0
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await stream.read() is not grpc.aio.EOF:
                got += 1
    finally:
        await channel.close()
    assert (caught.value.code(), caught.value.details(), got) == (code, details, tokens)


async def test_deadline_and_cancel_end_the_stream_on_the_server(server: tuple[_Engine, str]) -> None:
    engine, target = server
    channel = StreamChannel(target)
    try:
        late = channel.open(PATH, _request("hang", 1), 0.5, None, pb.GenerateResponse.FromString)
        assert (await late.read()).WhichOneof("response") == "chunk"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await late.read()
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        engine.cancelled.clear()
        left = channel.open(PATH, _request("hang", 1), None, None, pb.GenerateResponse.FromString)
        await left.read()
        assert left.cancel()
        await asyncio.wait_for(engine.cancelled.wait(), 5)  # the reset reached the servicer
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await left.read()
        assert caught.value.code() is grpc.StatusCode.CANCELLED
        # The connection still serves new streams.
        assert list(_kinds(await _read_all(channel.open(PATH, _request("ok", 1), 5, None,
                                                        pb.GenerateResponse.FromString)))) == ["chunk", "complete"]
    finally:
        await channel.close()


async def test_no_server_is_unavailable() -> None:
    [port] = free_ports(1)
    channel = StreamChannel(f"127.0.0.1:{port}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.open(PATH, _request("ok", 1), 5, None, pb.GenerateResponse.FromString).read()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_a_lost_connection_fails_its_streams_and_the_next_stream_reconnects(
        server: tuple[_Engine, str]) -> None:
    _, target = server
    channel = StreamChannel(target)
    try:
        stream = channel.open(PATH, _request("hang", 1), None, None, pb.GenerateResponse.FromString)
        await stream.read()
        connection = await channel.connection(1)
        assert connection.transport is not None
        connection.transport.abort()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        again = await _read_all(channel.open(PATH, _request("ok", 1), 5, None, pb.GenerateResponse.FromString))
        assert list(_kinds(again)) == ["chunk", "complete"]
    finally:
        await channel.close()
