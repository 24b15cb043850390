"""The engine simulator's cost model, driven step by step (no sleeping)."""

from __future__ import annotations

import pytest

from shepherd.sim.engine import ENGINE_HASH_SEED, Engine, EngineParams, block_keys
from shepherd.sim.text import output_words, prompt_text, tokenize, word_token_id


def _engine(**params: object) -> Engine:
    return Engine(EngineParams(**params))  # type: ignore[arg-type]


def _drain(engine: Engine) -> list[float]:
    durations = []
    while engine.num_running or engine.num_waiting:
        _, _, duration = engine._step()
        durations.append(duration)
    return durations


def test_block_keys_identify_whole_prefixes() -> None:
    a = block_keys(list(range(40)), 16)
    b = block_keys(list(range(32)) + [99] * 8, 16)
    c = block_keys([7] + list(range(1, 40)), 16)
    assert len(a) == 2 and a == b  # a partial tail is not a block
    assert a[0] != c[0] and a[1] != c[1]  # a different first token changes every later key


async def test_repeated_prompt_hits_the_prefix_cache() -> None:
    engine = _engine()
    prompt = list(range(100))
    first = engine.submit(prompt, 4, [1, 2, 3, 4])
    _drain(engine)
    assert first.cached_tokens == 0
    second = engine.submit(prompt, 4, [1, 2, 3, 4])
    assert second.cached_tokens == 96  # six full blocks of 16
    engine.flush_cache()
    assert engine.submit(prompt, 1, [1]).cached_tokens == 0


async def test_generated_blocks_are_cached_for_the_next_turn() -> None:
    engine = _engine()
    prompt = list(range(20))
    output = list(range(1000, 1044))
    engine.submit(prompt, len(output), output)
    _drain(engine)
    follow_up = prompt + output + [5, 6, 7]
    assert engine.submit(follow_up, 1, [1]).cached_tokens == 64  # (20 + 44) // 16 full blocks


async def test_prefill_is_chunked_and_priced_by_uncached_tokens() -> None:
    engine = _engine(prefill_tps=1000, prefill_chunk_tokens=512)
    engine.submit(list(range(1024)), 1, [1])
    durations = _drain(engine)
    assert durations[0] == pytest.approx(0.512) and durations[1] == pytest.approx(0.512)
    engine.submit(list(range(1024)), 1, [1])
    assert _drain(engine)[0] < 0.02  # fully cached: just a decode step


async def test_decode_step_grows_with_batch_size() -> None:
    engine = _engine(decode_base_ms=6.0, decode_per_req_ms=1.0, prefix_cache=False)
    for i in range(10):
        engine.submit([i], 3, [1, 2, 3])
    durations = _drain(engine)
    assert durations[-1] == pytest.approx(0.016)


async def test_kv_capacity_queues_requests() -> None:
    engine = _engine(kv_capacity_tokens=1000, prefix_cache=False)
    first = engine.submit(list(range(600)), 2, [1, 2])
    second = engine.submit(list(range(1000, 1600)), 2, [1, 2])
    engine._step()
    assert engine.num_running == 1 and engine.num_waiting == 1  # the second does not fit yet
    _drain(engine)
    assert first.generated == 2 and second.generated == 2


async def test_max_running_limits_the_batch() -> None:
    engine = _engine(max_running=2)
    for i in range(5):
        engine.submit([i], 50, list(range(50)))
    engine._step()
    assert engine.num_running == 2 and engine.num_waiting == 3


async def test_disconnected_requests_leave_the_batch() -> None:
    engine = _engine()
    request = engine.submit(list(range(10)), 100, list(range(100)))
    engine._step()
    request.disconnected = True
    engine._step()
    assert engine.num_running == 0


async def test_tokens_stream_in_real_time() -> None:
    engine = _engine(decode_base_ms=1.0)
    request = engine.submit(list(range(10)), 5, list(range(5)))
    counts = [count async for count in request.stream()]
    assert sum(counts) == 5 and request.done
    await engine.stop()


async def test_eviction_keeps_the_cache_within_its_capacity() -> None:
    engine = _engine(kv_capacity_tokens=1600, block_size=16)
    for i in range(20):
        engine.submit([i * 1000 + t for t in range(160)], 1, [1])
        _drain(engine)
    assert 1600 - 160 < engine.resident_tokens <= 1600  # full, as an engine keeps its cache


async def test_a_full_cache_makes_room_for_a_request_instead_of_queueing_it() -> None:
    """Cached blocks no running request holds are free KV (vLLM's free-block queue, SGLang's evictable
    radix cache): a prompt that needs them is admitted at once, its room taken from the oldest."""
    engine = _engine(kv_capacity_tokens=1600, block_size=16)
    for i in range(9):  # an idle cache of 1,440 tokens
        engine.submit([i * 1000 + t for t in range(160)], 1, [1])
        _drain(engine)
    running = engine.submit(list(range(90_000, 90_160)), 200, list(range(200)))
    engine._step()
    assert engine.num_running == 1
    big = engine.submit(list(range(100_000, 100_640)), 2, [1, 2])  # 640 tokens, far more than is free
    engine._step()
    assert engine.num_running == 2 and engine.num_waiting == 0
    assert engine.resident_tokens <= 1600
    oldest = block_keys(list(range(160)), 16, ENGINE_HASH_SEED)  # the first idle prompt's blocks
    assert not any(key in engine._blocks for key in oldest)  # went first
    running.disconnected = True
    _drain(engine)
    assert big.generated == 2


async def test_reported_usage_leaves_out_the_cache_no_request_holds() -> None:
    """As SGLang and vLLM report it: a cached block nobody holds is free (evicted on demand), so a full
    but idle cache is not an engine under load; a running request's blocks count once, however shared."""
    engine = _engine(kv_capacity_tokens=1600, block_size=16)
    for i in range(8):
        engine.submit([i * 1000 + t for t in range(160)], 1, [1])
        _drain(engine)
    assert engine.resident_tokens >= 8 * 160 * 0.9 and engine.used_tokens == 0 and engine.token_usage == 0
    shared = list(range(50_000, 50_160))
    for _ in range(2):
        engine.submit(shared + [7], 100, list(range(100)))
    engine._step()
    engine._step()
    assert engine.num_running == 2
    assert 160 <= engine.used_tokens < 2 * 160  # the shared prompt's blocks once, the tails apiece


def test_sim_text_is_deterministic_and_word_tokenized() -> None:
    assert output_words(42, 5) == output_words(42, 5) != output_words(43, 5)
    assert tokenize("hello  world") == [word_token_id("hello"), word_token_id("world")]
    body = {"system": "s", "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]}
    assert prompt_text(body) == "s a b"
    assert prompt_text({"input": [{"role": "user", "content": "x y"}]}) == "x y"

