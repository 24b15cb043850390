"""The traffic recorder: hash chains that reveal shared prefixes but not text, and bounded files."""

from __future__ import annotations

import os

import orjson
import pytest

from shepherd.cli import build_parser, config_from_args
from shepherd.config import ConfigError, RecordingConfig
from shepherd.recording.blocks import BLOCK_BYTES, BlockHasher, split_chain
from shepherd.recording.recorder import TrafficRecorder

SYSTEM = "You are a careful assistant that answers questions about the fleet. " * 8


def _record(recorder: TrafficRecorder, content: str, **headers: str) -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "stream": True, "max_tokens": 7}
    recorder.record(arrived=1000.5, api="/v1/chat/completions", body=body, headers=headers, status=200,
                    worker="http://127.0.0.1:1", usage=(40, 7, 16), ttft=0.0123, duration=0.5)


@pytest.mark.parametrize("by_process", [True, False])
def test_block_chain_shares_exactly_the_common_prefix(by_process: bool) -> None:
    hasher = BlockHasher(keyed_by_process=by_process)
    a = split_chain(hasher.chain(SYSTEM + " first question that is long enough to fill a block or two " * 6))
    b = split_chain(hasher.chain(SYSTEM + " another question entirely, also long enough to fill blocks " * 6))
    shared = len(SYSTEM.encode()) // BLOCK_BYTES
    assert shared >= 1 and a[:shared] == b[:shared]
    assert a[shared] != b[shared]
    assert len(a) == len((SYSTEM + " first question that is long enough to fill a block or two " * 6).encode()) \
        // BLOCK_BYTES
    assert hasher.chain("x" * (BLOCK_BYTES - 1)) == ""  # a partial block is not hashed
    # A block that repeats later in another prompt does not look shared: each hash covers the prefix.
    assert split_chain(hasher.chain("y" * BLOCK_BYTES + SYSTEM))[1] != split_chain(hasher.chain(SYSTEM))[0]
    other = BlockHasher(keyed_by_process=by_process)
    assert other.chain(SYSTEM)[:16] != hasher.chain(SYSTEM)[:16]  # keyed by secrets of its own


async def test_records_carry_features_but_no_text(tmp_path) -> None:
    recorder = TrafficRecorder(RecordingConfig(directory=str(tmp_path)))
    recorder.start()
    _record(recorder, "what is the capital of the secret project", **{"x-smg-routing-key": "user-42"})
    _record(recorder, "a second question", **{"x-smg-routing-key": "user-42"})
    await recorder.close()
    files = os.listdir(tmp_path)
    assert files == ["traffic-000001.jsonl"]
    raw = (tmp_path / files[0]).read_bytes()
    assert b"secret project" not in raw and b"careful assistant" not in raw and b"user-42" not in raw
    first, second = (orjson.loads(line) for line in raw.splitlines())
    assert first["prompt_tokens"] == 40 and first["output_tokens"] == 7 and first["max_tokens"] == 7
    assert first["stream"] is True and first["status"] == 200 and first["ttft_ms"] == 12.3
    assert first["routing_key"] == second["routing_key"] is not None
    assert split_chain(first["blocks"])[:4] == split_chain(second["blocks"])[:4]
    assert "prompt" not in first


async def test_record_prompts_keeps_the_text(tmp_path) -> None:
    recorder = TrafficRecorder(RecordingConfig(directory=str(tmp_path), prompts=True))
    recorder.start()
    _record(recorder, "visible question")
    await recorder.close()
    record = orjson.loads((tmp_path / "traffic-000001.jsonl").read_bytes())
    assert record["prompt"].endswith("visible question") and record["routing_key"] is None


async def test_files_rotate_and_the_oldest_are_deleted(tmp_path) -> None:
    config = RecordingConfig(directory=str(tmp_path), max_file_bytes=4096, max_files=3)
    recorder = TrafficRecorder(config)
    recorder.start()
    for i in range(200):
        _record(recorder, f"question {i}")
        if i % 20 == 0:
            await recorder.flush()
    await recorder.close()
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3
    assert all(len((tmp_path / n).read_bytes()) <= 4096 for n in names)
    assert names[-1] > "traffic-000003.jsonl"  # older files were removed, not overwritten
    lines = [orjson.loads(line) for n in names for line in (tmp_path / n).read_bytes().splitlines()]
    assert lines and recorder.written == 200 and recorder.dropped == 0
    # A restart continues with a new file after the newest one.
    again = TrafficRecorder(config)
    again.start()
    _record(again, "after restart")
    await again.close()
    assert sorted(os.listdir(tmp_path))[-1] > names[-1]


async def test_a_full_buffer_drops_and_counts(tmp_path) -> None:
    recorder = TrafficRecorder(RecordingConfig(directory=str(tmp_path), max_buffer_bytes=4096))
    for i in range(100):  # never flushed: the buffer fills
        _record(recorder, f"question {i}")
    assert recorder.dropped > 0
    assert sum(len(line) for line in recorder._buffer) <= 4096


def test_recording_is_off_by_default_and_flags_are_validated(tmp_path) -> None:
    assert config_from_args(build_parser().parse_args(["launch"])).recording.directory is None
    config = config_from_args(build_parser().parse_args(
        ["launch", "--record-traffic", str(tmp_path), "--record-prompts", "--record-max-file-size", "1M",
         "--record-max-files", "3"])).validate()
    assert config.recording == RecordingConfig(str(tmp_path), True, 1024 * 1024, 3)
    (tmp_path / "a-file").write_text("")
    for bad in (["--record-prompts"], ["--record-traffic", str(tmp_path), "--record-max-files", "0"],
                ["--record-traffic", str(tmp_path / "a-file")]):
        try:
            config_from_args(build_parser().parse_args(["launch", *bad])).validate()
        except ConfigError:
            continue
        raise AssertionError(f"{bad} was accepted")
