"""The two-level cache never changes a tokenization, and reuses what it can."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd.tokenizer.cache import CacheConfig, CachedEncoder
from tests.qwen import qwen_tokenizer

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>"]
PIECES = st.one_of(
    st.sampled_from(SPECIAL),
    st.sampled_from(["system\n", "user\n", "assistant\n", "\n", " ", "  ", "\n\n", "é", "🦜", "日本語", "'s", "Hello"]),
    st.text(min_size=0, max_size=12),
)
PROMPTS = st.lists(PIECES, min_size=0, max_size=16).map("".join)


def _encoder(l0: bool = True, l1: bool = True, l0_entries: int = 64, l1_memory: int = 64 * 1024) -> CachedEncoder:
    return CachedEncoder(qwen_tokenizer(), CacheConfig(l0, l0_entries, l1, l1_memory))


SHARED = _encoder()  # shared across examples so later prompts hit entries earlier ones left


@settings(max_examples=300, deadline=None)
@given(prompts=st.lists(PROMPTS, min_size=1, max_size=4), add_special=st.booleans())
def test_cached_ids_equal_uncached_ids(prompts: list[str], add_special: bool) -> None:
    tokenizer = qwen_tokenizer()
    for prompt in prompts:
        expected = tokenizer.encode(prompt, add_special)
        assert SHARED.encode(prompt, add_special) == expected
        assert SHARED.encode(prompt, add_special) == expected  # now an L0 hit
        # A longer prompt with this one as its prefix goes through an L1 hit.
        longer = prompt + "<|im_end|>\n<|im_start|>user\n" + prompt
        assert SHARED.encode(longer, add_special) == tokenizer.encode(longer, add_special)


@settings(max_examples=50, deadline=None)
@given(prompt=PROMPTS)
async def test_async_path_equals_sync_path(prompt: str) -> None:
    encoder = _encoder(l0=False)
    long_prompt = prompt * 40 + "<|im_end|>" + prompt  # over the offload threshold
    assert await encoder.encode_async(long_prompt) == qwen_tokenizer().encode(long_prompt)
    assert await encoder.encode_async(long_prompt) == qwen_tokenizer().encode(long_prompt)


def _chat(system: str, question: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_l1_reuses_a_shared_system_prompt() -> None:
    encoder = _encoder(l0=False)
    system = "You are a meticulous assistant. " * 50
    encoder.encode(_chat(system, "first question"))
    assert encoder.stats.l1_misses == 1
    for question in ("second", "third"):
        assert encoder.encode(_chat(system, question)) == qwen_tokenizer().encode(_chat(system, question))
    assert encoder.stats.l1_hits == 2
    system_block = qwen_tokenizer().encode(f"<|im_start|>system\n{system}<|im_end|>")
    assert encoder.stats.l1_tokens_reused >= 2 * len(system_block)


def test_l0_counts_and_bounds_entries() -> None:
    encoder = _encoder(l1=False, l0_entries=3)
    for text in ("a", "b", "a", "c", "d", "e"):
        encoder.encode(text)
    assert encoder.stats.l0_hits == 1 and encoder.stats.l0_misses == 5
    assert encoder.l0 is not None and len(encoder.l0) == 3
    encoder.encode("a", True)  # the other flag shares the budget
    assert len(encoder.l0) == 3


def test_l1_stays_under_its_memory_bound() -> None:
    encoder = _encoder(l0=False, l1_memory=4096)
    for i in range(50):
        encoder.encode(_chat(f"system prompt number {i} " * 20, "q"))
    assert encoder.l1 is not None
    assert 0 < encoder.l1.memory <= 4096
    assert encoder.info()["l1_memory_bytes"] == encoder.l1.memory


def test_l0_stays_under_its_memory_bound_and_counts_evictions() -> None:
    encoder = CachedEncoder(qwen_tokenizer(), CacheConfig(enable_l0=True, l0_max_entries=1000, l0_max_memory=4096))
    for i in range(40):
        encoder.encode(f"question number {i} " * 10)  # about 400 bytes an entry with its ids and overhead
    assert encoder.l0 is not None and 0 < encoder.l0.memory <= 4096
    assert len(encoder.l0) < 40 and encoder.l0.evictions == 40 - len(encoder.l0)
    encoder.encode("x" * 8192)  # larger than the whole cache: never stored, nothing evicted for it
    assert encoder.l0.evictions == 40 - len(encoder.l0) and encoder.l0.memory <= 4096
    last = "question number 39 " * 10
    assert encoder.encode(last) == qwen_tokenizer().encode(last)
    assert encoder.stats.l0_hits == 1 and encoder.stats.l0_reused_bytes == len(last.encode())


def test_registry_totals_sum_every_tokenizer_and_keep_the_counts_of_removed_ones() -> None:
    from shepherd.tokenizer.registry import TokenizerRegistry

    registry = TokenizerRegistry(CacheConfig(enable_l0=True, enable_l1=True))
    for model in ("a", "b"):
        entry = registry.register(model, qwen_tokenizer(), "test")
        entry.encode(_chat("shared system prompt", "q1"))
        entry.encode(_chat("shared system prompt", "q1"))  # L0 hit
        entry.encode(_chat("shared system prompt", "q2"))  # L0 miss, L1 hit
    totals = registry.cache_totals()
    assert (totals["l0_hits"], totals["l0_misses"], totals["l1_hits"], totals["l1_misses"]) == (2, 4, 2, 2)
    assert totals["l0_entries"] == 4 and totals["l1_reused_bytes"] > 0
    registry.remove("a")
    after = registry.cache_totals()
    assert after["l0_hits"] == 2 and after["l0_entries"] == 2  # counters keep growing; sizes are the present


async def test_the_totals_are_smgs_tokenizer_cache_families() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from shepherd.observability.metrics import LiveState, Metrics
    from shepherd.tokenizer.registry import TokenizerRegistry

    registry = TokenizerRegistry(CacheConfig(enable_l0=True))
    entry = registry.register("m", qwen_tokenizer(), "test")
    entry.encode("hello")
    entry.encode("hello")
    metrics = Metrics()
    metrics.attach(LiveState(workers=lambda: (), serves=lambda m: False, requests_in_flight=lambda: 0,
                             admission_queue_depth=lambda: 0, admission_in_flight=lambda: 0, cache_trees=lambda: (),
                             tokenizer_cache=registry.cache_totals))
    families = {f.name: f for f in text_string_to_metric_families((await metrics.exposition()).decode())}
    lookups = {(s.labels["layer"], s.labels["result"]): s.value
               for s in families["smg_tokenizer_cache_lookups"].samples}
    assert lookups == {("l0", "hit"): 1, ("l0", "miss"): 1, ("l1", "hit"): 0, ("l1", "miss"): 0}  # L1 off: zeros
    reused = {s.labels["layer"]: s.value for s in families["smg_tokenizer_cache_reused_bytes"].samples}
    assert reused == {"l0": 5, "l1": 0}
    assert {s.labels["layer"]: s.value for s in families["smg_tokenizer_cache_entries"].samples} == {"l0": 1, "l1": 0}
    assert "smg_tokenizer_cache_evictions" in families


async def test_with_autoload_off_a_grpc_worker_gets_only_a_registered_tokenizer(tmp_path: Any) -> None:
    import pytest

    from shepherd.config import GatewayConfig
    from shepherd.tokenizer.registry import TokenizerRegistry
    from shepherd.workers.errors import ProbeError
    from shepherd.workers.grpc_pool import GrpcClientPool
    from shepherd.workers.grpc_setup import GrpcWorkerSetup
    from shepherd.workers.worker import Worker

    registry = TokenizerRegistry()
    config = GatewayConfig(disable_tokenizer_autoload=True, tokenizer_path=str(tmp_path))
    setup = GrpcWorkerSetup(config, GrpcClientPool(), registry)
    worker = Worker(id="g", url="grpc://127.0.0.1:1", model_ids=("m",), connection_mode="grpc")
    with pytest.raises(ProbeError, match="autoload is off.*POST /v1/tokenizers"):
        await setup.prepare(worker)
    registry.register("m", qwen_tokenizer(), "api")  # what POST /v1/tokenizers does
    await setup.prepare(worker)
