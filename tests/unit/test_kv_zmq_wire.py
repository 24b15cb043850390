"""vLLM's/SGLang's KV-event payloads as the ZMQ follower reads them, in both encodings."""

from __future__ import annotations

import contextlib

import msgpack
import pytest

from shepherd.cli import build_parser, config_from_args
from shepherd.config import ConfigError, GatewayConfig
from shepherd.kv.index import KvIndex
from shepherd.kv.stream import EventStream
from shepherd.kv.zmq_wire import WireError, decode_batch, encode_batch, parse_seq, seq_bytes

BS = 4
TOKENS = list(range(100, 112))  # three blocks


def test_the_simulators_batches_read_back_as_the_index_events() -> None:
    payload = encode_batch([("stored", None, ((11, tuple(TOKENS[:4])), (12, tuple(TOKENS[4:8])))),
                            ("removed", (11,)), ("cleared",)], BS)
    batch = decode_batch(7, payload)
    assert batch.seq == 7
    assert batch.events[0] == ("stored", None, [(11, TOKENS[:4]), (12, TOKENS[4:8])], BS)
    assert batch.events[1:] == [("removed", (11,)), ("cleared",)]


def test_array_like_and_map_encodings_both_apply() -> None:
    array_form = msgpack.packb([1.0, [["BlockStored", [1, 2], None, TOKENS[:8], BS, None]], 0])  # SGLang: no medium
    map_form = msgpack.packb({"ts": 1.0, "events": [
        {"type": "BlockStored", "block_hashes": [b"\x03"], "parent_block_hash": 2, "token_ids": TOKENS[8:],
         "block_size": BS, "lora_id": None, "medium": "GPU", "lora_name": None},
        {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU"}], "data_parallel_rank": 0})
    index = KvIndex(BS)
    stream = EventStream("w", index)
    stream.apply(decode_batch(0, array_form))
    assert index.blocks("w") == 2
    stream.apply(decode_batch(1, map_form))
    assert index.blocks("w") == 2 and index.stats()["w"]["removed"] == 1 and index.is_live("w")


def test_lora_and_offloaded_blocks_are_not_what_a_request_hits() -> None:
    payload = msgpack.packb([0.0, [["BlockStored", [1], None, TOKENS[:4], BS, 3, "GPU"],
                                   ["BlockStored", [2], None, TOKENS[:4], BS, None, "CPU"],
                                   ["BlockRemoved", [9], "CPU"]]])
    assert decode_batch(0, payload).events == []


@pytest.mark.parametrize("payload", [
    b"\xc1",  # not msgpack
    msgpack.packb([0.0, "events"]),
    msgpack.packb([0.0, [["BlockStored", [1, 2], None, TOKENS[:4], BS, None]]]),  # 2 blocks, 1 block of tokens
    msgpack.packb([0.0, [["BlockStored", [1], None, TOKENS[:4], 0, None]]]),
    msgpack.packb([0.0, [["BlockRemoved", ["x"]]]]),
    msgpack.packb([0.0, [42]]),
])
def test_a_malformed_batch_is_refused(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(0, payload)


def test_sequence_numbers_are_8_byte_big_endian_and_minus_one_ends_a_replay() -> None:
    assert seq_bytes(1) == b"\x00" * 7 + b"\x01"
    assert parse_seq(seq_bytes(-1)) == -1
    with pytest.raises(WireError):
        parse_seq(b"\x01")


def _launch(*argv: str) -> GatewayConfig:
    return config_from_args(build_parser().parse_args(["launch", *argv])).validate()


def test_kv_events_endpoint_flags_are_checked() -> None:
    config = _launch("--worker-urls", "http://e:1", "--kv-events-endpoint", "http://e:1", "tcp://e:5557",
                     "tcp://e:5558")
    assert config.kv_events_endpoints == (("http://e:1", "tcp://e:5557", "tcp://e:5558"),)
    for bad in (["--kv-events-endpoint", "http://other:1", "tcp://e:5557"],  # not a startup worker
                ["--kv-events-endpoint", "http://e:1", "tcp://*:5557"],  # the engine binds; we connect
                ["--kv-events-endpoint", "http://e:1", "udp://e:5557"],
                ["--kv-events-endpoint", "http://e:1"]):
        with pytest.raises(ConfigError):
            _launch("--worker-urls", "http://e:1", *bad)


async def test_a_worker_is_not_trusted_until_its_replay_has_been_read_to_the_end() -> None:
    """The connect-time replay is the engine's history: up to thousands of batches, seconds to apply.
    Part-way through, the index says what the engine held back then, so routing by it would send
    requests to blocks evicted since; the worker stays on the approximate tree until the end."""
    import asyncio

    import zmq
    import zmq.asyncio

    from shepherd.kv.endpoints import ZmqEndpoints
    from shepherd.kv.zmq_follow import ZmqFollower
    from shepherd.kv.zmq_wire import END_SEQ
    from shepherd.testing import free_ports
    from shepherd.workers.worker import Worker

    context = zmq.asyncio.Context()
    pub_port, replay_port = free_ports(2)
    pub, router = context.socket(zmq.PUB), context.socket(zmq.ROUTER)
    pub.bind(f"tcp://127.0.0.1:{pub_port}")
    router.bind(f"tcp://127.0.0.1:{replay_port}")
    index = KvIndex(BS)
    worker = Worker(id="w", url="http://w", model_ids=("m",))
    follower = ZmqFollower(worker, EventStream("w", index),
                           ZmqEndpoints(f"tcp://127.0.0.1:{pub_port}", f"tcp://127.0.0.1:{replay_port}"), context)
    task = asyncio.create_task(follower.run())

    async def until(condition: object) -> None:
        for _ in range(500):
            if condition():  # type: ignore[operator]
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    try:
        identity, _, start = await asyncio.wait_for(router.recv_multipart(), 10)
        assert parse_seq(start) == 0
        for seq, parent, block in ((1, None, 11), (2, 11, 12)):
            tokens = tuple(TOKENS[(seq - 1) * BS:seq * BS])
            payload = encode_batch([("stored", parent, ((block, tokens),))], BS)
            await router.send_multipart([identity, b"", seq_bytes(seq), payload])
        await until(lambda: index.blocks("w") == 2)
        assert not index.is_live("w")  # applied, but the replay has not said it is over
        await router.send_multipart([identity, b"", seq_bytes(END_SEQ), b""])
        await until(lambda: index.is_live("w"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pub.close(linger=0)
        router.close(linger=0)
        context.term()
