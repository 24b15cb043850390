"""Record real traffic through the gateway, then ask `shepherd replay` which policy suits it."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from shepherd.testing import Gateway, Sim
from shepherd.testing.processes import ROOT

MODEL = "mock-model"
VOCABULARY = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
              "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
SECRET = "zanzibarquux"  # a word only the prompts contain: it must never reach the trace files
AFFINITY = {"cache_aware", "prefix_hash"}
BALANCERS = {"round_robin", "power_of_two", "least_load"}


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))


@pytest.fixture(scope="module")
def engines() -> Iterator[Sim]:
    sim = Sim(2, "--model", MODEL, "--output-tokens", "16")
    yield sim
    sim.stop()


def _record(engines: Sim, directory: str, drive: Any) -> list[dict[str, Any]]:
    gateway = Gateway(engines.urls, "--policy", "round_robin", "--record-traffic", directory)
    try:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        expected = asyncio.run(drive(client))
    finally:
        gateway.stop()  # a clean stop flushes what is buffered
    lines = [orjson.loads(line) for name in sorted(os.listdir(directory))
             for line in Path(directory, name).read_bytes().splitlines()]
    assert len(lines) == expected
    return lines


async def _multi_turn(client: openai.AsyncOpenAI) -> int:
    """30 conversations of 8 turns over 4 shared system prompts, 6 at a time."""
    seed = random.Random(7)
    systems = [f"system {i} {SECRET} " + _words(seed, 120) for i in range(4)]
    gate = asyncio.Semaphore(6)

    async def conversation(number: int) -> None:
        rng = random.Random(number)
        messages: list[dict[str, str]] = [{"role": "system", "content": systems[number % 4]}]
        async with gate:
            for turn in range(8):
                messages.append({"role": "user", "content": _words(rng, 40)})
                if turn % 2:
                    stream = await client.chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=16, stream=True,  # type: ignore[arg-type]
                        stream_options={"include_usage": True})
                    answer = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                else:
                    reply = await client.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                                                 max_tokens=16)
                    answer = reply.choices[0].message.content or ""
                messages.append({"role": "assistant", "content": answer})

    await asyncio.gather(*(conversation(n) for n in range(30)))
    return 240


async def _unique(client: openai.AsyncOpenAI) -> int:
    """240 one-shot prompts that share nothing, not even their first word."""
    gate = asyncio.Semaphore(6)

    async def ask(number: int) -> None:
        rng = random.Random(1000 + number)
        async with gate:
            await client.chat.completions.create(
                model=MODEL, max_tokens=16,
                messages=[{"role": "user", "content": f"q{number} " + _words(rng, rng.randint(100, 300))}])

    await asyncio.gather(*(ask(n) for n in range(240)))
    return 240


def _replay(directory: str, *flags: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-m", "shepherd", "replay", directory, "--workers", "4", "--json", *flags],
                          cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout), done.stderr.decode()


def test_advisor_prefers_cache_affinity_on_recorded_multi_turn_chat(engines: Sim, tmp_path) -> None:
    directory = str(tmp_path / "trace")
    records = _record(engines, directory, _multi_turn)
    raw = b"".join(Path(directory, n).read_bytes() for n in os.listdir(directory))
    assert SECRET.encode() not in raw  # the prompts are hash chains, never text
    assert all(r["status"] == 200 and r["worker"] in engines.urls for r in records)
    streamed = [r for r in records if r["stream"]]
    assert len(streamed) == 120 and all(r["ttft_ms"] is not None and r["output_tokens"] == 16 for r in streamed)
    assert all(r["prompt_tokens"] > 120 for r in records)

    report, progress = _replay(directory, "--seed", "5")
    assert "[1/" in progress and "done" in progress  # progress is shown while it runs
    ranked = [r["policy"] for r in report["results"]]
    best_affinity = min(ranked.index(p) for p in AFFINITY)
    assert best_affinity < ranked.index("round_robin"), ranked
    assert report["recommendation"]["policy"] in AFFINITY
    assert report["recommendation"]["launch_flags"][:2] == ["--policy", report["recommendation"]["policy"]]
    by_policy = {r["label"]: r for r in report["results"]}
    assert by_policy["cache_aware"]["hit_rate"] > by_policy["round_robin"]["hit_rate"] + 0.1

    again, _ = _replay(directory, "--seed", "5")
    assert again == report  # deterministic for a seed


def test_advisor_prefers_a_load_balancer_without_shared_prefixes(engines: Sim, tmp_path) -> None:
    directory = str(tmp_path / "trace")
    _record(engines, directory, _unique)
    report, _ = _replay(directory, "--seed", "5", "--time-scale", "0.5")
    assert report["recommendation"]["policy"] in BALANCERS, report["results"]
    assert all(r["hit_rate"] < 0.05 for r in report["results"])


def test_replay_rejects_bad_input_cleanly(tmp_path) -> None:
    (tmp_path / "traffic-000001.jsonl").write_bytes(b"not json\n")
    for args in ([str(tmp_path)], [str(tmp_path / "missing")], []):
        done = subprocess.run([sys.executable, "-m", "shepherd", "replay", *args], cwd=ROOT, capture_output=True,
                              timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(b"shepherd replay: "), done.stderr
        assert b"Traceback" not in done.stderr
