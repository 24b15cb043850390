"""A vLLM gRPC worker added at run time whose tokenizer the gateway can only get with GetTokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shepherd.testing import Gateway, GrpcSim, wait_until
from tests.qwen import IM_END, qwen_dir, qwen_tokenizer

MODEL = "qwen3-vllm"
MESSAGES = [{"role": "user", "content": "Tell me about Paris."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[GrpcSim]:
    process = GrpcSim(1, "--model", MODEL, "--output-tokens", "20", "--no-advertise-tokenizer-path",
                      "--default-sampling-params", '{"temperature": 0.6, "top_k": 20}', runtime="vllm")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(sim: GrpcSim) -> Iterator[Gateway]:
    gw = Gateway()
    response = httpx.post(gw.url + "/workers", json={"url": sim.targets[0]})
    assert response.status_code == 202, response.text
    wait_until(lambda: len(gw.workers()) == 1, 20, message="the vLLM worker to register")
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(sim: GrpcSim) -> Iterator[None]:
    sim.reset()
    yield


@pytest.fixture()
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def _record(sim: GrpcSim) -> dict[str, Any]:
    [record] = sim.requests()
    return record


def test_runtime_and_tokenizer_come_from_the_worker(gateway: Gateway) -> None:
    [worker] = gateway.workers()
    assert worker["runtime_type"] == "vllm" and worker["connection_mode"] == "grpc"
    assert "tokenizer_path" not in worker["labels"]  # nothing local to load: GetTokenizer it was
    info = httpx.get(gateway.url + f"/v1/tokenizers/{MODEL}").json()
    assert info["origin"] == "worker" and info["chat_template"] is True
    assert IM_END in info["eos_token_ids"]


def test_chat_whole_and_streamed(client: openai.OpenAI, sim: GrpcSim) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    [output_ids] = _record(sim)["output_ids"]
    expected = qwen_tokenizer().decode(output_ids[:-1])
    assert completion.choices[0].message.content == expected
    sim.reset()
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    usage = chunks[-1].usage
    assert usage is not None
    # vLLM chunks carry deltas; the gateway adds them up.
    assert usage.completion_tokens == len(output_ids)
    assert usage.prompt_tokens == len(_record(sim)["input_ids"])


def test_model_sampling_defaults_fill_what_the_request_omits(client: openai.OpenAI, sim: GrpcSim) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    params = _record(sim)["sampling_params"]
    assert params["temperature"] == pytest.approx(0.6) and params["top_k"] == 20
    sim.reset()
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0.0)
    params = _record(sim)["sampling_params"]
    assert params.get("temperature", 0.0) == 0.0 and params["max_tokens"] == 2


def test_vllm_gets_the_stop_strings_and_the_gateway_trims(client: openai.OpenAI, sim: GrpcSim) -> None:
    sim.faults(response_text="The capital of France is Paris, a lovely city.")
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=["is Par"])
    record = _record(sim)
    assert record["sampling_params"]["stop"] == ["is Par"]
    assert record["output_ids"] == [qwen_tokenizer().encode("The capital of France is Paris")]  # vLLM stopped
    assert completion.choices[0].message.content == "The capital of France "
    assert completion.choices[0].finish_reason == "stop"


def test_logprobs_and_json_object(client: openai.OpenAI, sim: GrpcSim) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=3,
                                                response_format={"type": "json_object"})
    params = _record(sim)["sampling_params"]
    assert params["logprobs"] == 3 and params["json_object"] is True
    assert completion.choices[0].logprobs is not None and completion.choices[0].logprobs.content
    assert all(len(entry.top_logprobs) == 3 for entry in completion.choices[0].logprobs.content)


def test_disconnect_sends_abort_with_request_ids(gateway: Gateway, sim: GrpcSim) -> None:
    sim.faults(chunk_delay_ms=40)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 200}
    with httpx.Client(timeout=10) as http, http.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and "content" in line and json.loads(line[6:])["choices"][0]["delta"].get(
                    "content"):
                break
    wait_until(lambda: sim.stats()["aborts"] >= 1, 10, message="an Abort RPC")
    assert sim.stats()["aborted_ids"] == [_record(sim)["request_id"]]


def test_tokenizer_path_and_chat_template_flags(sim: GrpcSim, tmp_path: Path) -> None:
    template = tmp_path / "simple.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}")
    gateway = Gateway(sim.targets, "--tokenizer-path", qwen_dir(), "--chat-template", str(template))
    try:
        info = httpx.get(gateway.url + f"/v1/tokenizers/{MODEL}").json()
        assert info["origin"] == "path" and info["source"] == qwen_dir()
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        assert _record(sim)["tokenized"]["original_text"] == (
            "<|im_start|>user: Tell me about Paris.<|im_end|><|im_start|>assistant: ")
    finally:
        gateway.stop()
