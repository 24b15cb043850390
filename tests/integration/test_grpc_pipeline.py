"""The gRPC pipeline end to end: the official openai SDK -> gateway -> simulated SGLang gRPC engines.

The simulator encodes its answers with the real Qwen3 tokenizer, so every test can check the
gateway's text against what the engine's token ids decode to.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from shepherd.testing import Gateway, GrpcSim, wait_until
from tests.qwen import IM_END, qwen_tokenizer

MODEL = "qwen3-sim"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def sims() -> Iterator[GrpcSim]:
    sim = GrpcSim(2, "--model", MODEL, "--output-tokens", "24")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(sims: GrpcSim) -> Iterator[Gateway]:
    gw = Gateway(sims.targets, "--tokenizer-cache-enable-l0", "--tokenizer-cache-enable-l1")
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(sims: GrpcSim) -> Iterator[None]:
    sims.reset()
    yield


@pytest.fixture()
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def _only_request(sims: GrpcSim) -> dict[str, Any]:
    records = sims.requests()
    assert len(records) == 1, records
    return records[0]


def _decoded(ids: list[int]) -> str:
    """What an engine's ids say, up to (not including) EOS."""
    if IM_END in ids:
        ids = ids[:ids.index(IM_END)]
    return qwen_tokenizer().decode(ids, skip_special_tokens=True)


def test_registration_detects_the_runtime_and_reads_model_info(gateway: Gateway) -> None:
    workers = gateway.workers()
    assert len(workers) == 2
    for worker in workers:
        assert worker["connection_mode"] == "grpc" and worker["runtime_type"] == "sglang"
        assert worker["model_id"] == MODEL
        assert worker["labels"]["tp_size"] == "1" and worker["labels"]["weight_version"] == "sim-1"
        # A checkpoint directory, as a real engine reports: tokenizer files beside the model's config
        # (SMG reads that config from the path at every request until it finds one).
        model_path = worker["labels"]["model_path"]
        assert os.path.isfile(os.path.join(model_path, "tokenizer.json"))
        with open(os.path.join(model_path, "config.json")) as handle:
            config = json.load(handle)
        assert config["architectures"] == ["Qwen3ForCausalLM"] and "vision_config" not in config
    models = httpx.get(gateway.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == [MODEL]


def test_chat_text_is_what_the_engine_ids_decode_to(client: openai.OpenAI, sims: GrpcSim) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    record = _only_request(sims)
    [output_ids] = record["output_ids"]
    assert output_ids[-1] == IM_END
    choice = completion.choices[0]
    assert choice.message.content == _decoded(output_ids)
    assert choice.finish_reason == "stop"
    assert completion.model == MODEL and completion.system_fingerprint == "sim-1"
    # What the engine got is the Qwen3 template's rendering of the messages, tokenized as a whole.
    template = qwen_tokenizer().chat_template
    assert template is not None
    prompt = template.render(MESSAGES, add_generation_prompt=True)
    assert record["tokenized"]["original_text"] == prompt
    assert record["input_ids"] == qwen_tokenizer().encode(prompt)
    assert record["require_reasoning"] is True  # Qwen3 thinks unless told not to
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(record["input_ids"])
    assert completion.usage.completion_tokens == len(output_ids)


def test_streamed_chat_matches_and_reports_usage(client: openai.OpenAI, sims: GrpcSim) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    [output_ids] = _only_request(sims)["output_ids"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _decoded(output_ids)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(output_ids)


def test_multibyte_characters_split_across_tokens_arrive_whole(client: openai.OpenAI, sims: GrpcSim) -> None:
    text = "Parrot 🦜 and 日本語, naïve café."
    assert len(qwen_tokenizer().encode("🦜")) > 1  # the emoji really is split across byte-level tokens
    for index in range(2):
        sims.faults(index, response_text=text, tokens_per_chunk=1)
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True) if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "🦜" in deltas or " 🦜" in deltas


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_split_across_tokens_is_cut_exactly(client: openai.OpenAI, sims: GrpcSim, stream: bool) -> None:
    text = "The capital of France is Paris, a lovely city."
    for index in range(2):
        sims.faults(index, response_text=text, tokens_per_chunk=2)
    stop = "is Par"  # " is" and " Paris" are separate tokens
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=[stop], stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason][0]
    else:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=[stop])
        finish = completion.choices[0]
        content = finish.message.content or ""
    assert content == "The capital of France "
    assert finish.finish_reason == "stop"
    assert finish.model_extra is not None and finish.model_extra.get("matched_stop") == stop
    record = _only_request(sims)
    assert "stop" not in record["sampling_params"]  # SGLang workers never see stop strings


def test_single_token_stop_goes_to_the_engine_as_a_stop_token_id(client: openai.OpenAI, sims: GrpcSim) -> None:
    text = "one two three four"
    for index in range(2):
        sims.faults(index, response_text=text)
    [three] = qwen_tokenizer().encode(" three")
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=[" three"])
    assert completion.choices[0].message.content == "one two"
    record = _only_request(sims)
    assert record["sampling_params"]["stop_token_ids"] == [three]
    assert record["output_ids"] == [qwen_tokenizer().encode("one two three")]  # the engine stopped on it


def test_max_tokens_and_sampling_defaults(client: openai.OpenAI, sims: GrpcSim) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0.3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    params = _only_request(sims)["sampling_params"]
    assert params["max_new_tokens"] == 5
    assert params["temperature"] == pytest.approx(0.3)
    assert params["top_p"] == 1.0 and params["top_k"] == -1 and params["repetition_penalty"] == 1.0
    assert params["n"] == 1 and params["spaces_between_special_tokens"] is True


def test_n_choices_usage_and_distinct_answers(client: openai.OpenAI, sims: GrpcSim) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    record = _only_request(sims)
    outputs = record["output_ids"]
    assert [c.message.content for c in completion.choices] == [_decoded(ids) for ids in outputs]
    assert outputs[0] != outputs[1]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(record["input_ids"])
    assert completion.usage.completion_tokens == sum(len(ids) for ids in outputs)
    streamed = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, stream=True))
    texts = ["", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in completion.choices]


def test_logprobs_cover_each_answer_token(client: openai.OpenAI, sims: GrpcSim) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2)
    choice = completion.choices[0]
    [output_ids] = _only_request(sims)["output_ids"]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == len(output_ids) - 1  # every token but the hidden EOS
    assert b"".join(bytes(e.bytes or []) for e in entries).decode() == choice.message.content
    assert all(len(e.top_logprobs) == 2 and e.logprob < 0 for e in entries)
    assert _only_request(sims)["top_logprobs_num"] == 2


def test_client_disconnect_aborts_the_engine_request(gateway: Gateway, sims: GrpcSim) -> None:
    for index in range(2):
        sims.faults(index, chunk_delay_ms=40)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 200}
    with httpx.Client(timeout=10) as http, http.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data:")
            if events >= 3:
                break
    # Leaving the block closed the connection mid-stream.
    wait_until(lambda: sum(sims.stats(i)["aborts"] for i in range(2)) >= 1, 10, message="an Abort RPC")
    aborted = [rid for i in range(2) for rid in sims.stats(i)["aborted_ids"]]
    assert aborted == [_only_request(sims)["request_id"]]
    wait_until(lambda: all(w["load"] == 0 for w in gateway.workers()), 5, message="loads back to 0")


def test_worker_errors_map_to_http_and_unavailable_is_retried(client: openai.OpenAI, sims: GrpcSim) -> None:
    sims.faults(0, error_code="UNAVAILABLE")
    for _ in range(2):  # whichever sim round robin picks first, the answer comes from sim 1
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
    assert sims.stats(1)["completed"] == 2
    for index in range(2):
        sims.faults(index, error_code="INVALID_ARGUMENT")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "INVALID_ARGUMENT" in str(caught.value)


def test_error_mid_stream_ends_with_an_error_event(gateway: Gateway, sims: GrpcSim) -> None:
    for index in range(2):
        sims.faults(index, error_code="INTERNAL", error_after_chunks=3)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    lines = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10).text.splitlines()
    data = [line[6:] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert "INTERNAL" in json.loads(data[-2])["error"]["message"]


def test_structured_output_reaches_the_engine(client: openai.OpenAI, sims: GrpcSim) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={
        "type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    params = _only_request(sims)["sampling_params"]
    assert json.loads(params["json_schema"]) == schema
    sims.reset()
    client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"regex": "[0-9]+"})
    assert _only_request(sims)["sampling_params"]["regex"] == "[0-9]+"
    sims.reset()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools, tool_choice="required")
    record = _only_request(sims)
    forced = json.loads(record["sampling_params"]["json_schema"])
    assert forced["type"] == "array" and forced["items"]["anyOf"][0]["properties"]["name"]["enum"] == ["get_weather"]
    assert "get_weather" in record["tokenized"]["original_text"]  # the template rendered the tools
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={"type": "json_object"},
                                       extra_body={"regex": "a"})


def test_thinking_switch_and_reasoning_tokens(client: openai.OpenAI, sims: GrpcSim) -> None:
    for index in range(2):
        sims.faults(index, response_text="<think>\nLet me think.\n</think>\n\nHello!")
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    record = _only_request(sims)
    assert record["require_reasoning"] is True
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == len(
        qwen_tokenizer().encode("<think>\nLet me think.\n"))
    sims.reset()
    client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    record = _only_request(sims)
    assert record.get("require_reasoning") is None  # false: proto3 leaves it out
    assert record["tokenized"]["original_text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_completions_endpoint(client: openai.OpenAI, sims: GrpcSim) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, echo=True)
    record = _only_request(sims)
    assert record["input_ids"] == qwen_tokenizer().encode("Once upon a time", True)
    [output_ids] = record["output_ids"]
    assert completion.choices[0].text == "Once upon a time" + _decoded(output_ids)
    assert completion.choices[0].finish_reason == "length"
    sims.reset()
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True))
    [output_ids] = _only_request(sims)["output_ids"]
    assert "".join(c.choices[0].text for c in chunks) == _decoded(output_ids)


def test_generate_endpoint_with_text_and_ids(gateway: Gateway, sims: GrpcSim) -> None:
    body = {"text": "Hello there", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    answer = httpx.post(gateway.url + "/generate", json=body, timeout=10).json()
    record = _only_request(sims)
    assert record["input_ids"] == qwen_tokenizer().encode("Hello there")
    assert answer["output_ids"] == record["output_ids"][0]
    assert answer["text"] == _decoded(answer["output_ids"])
    assert answer["meta_info"]["finish_reason"] == {"type": "length", "length": 8}
    sims.reset()
    ids = qwen_tokenizer().encode("Hello there")
    events = httpx.post(gateway.url + "/generate", json={"input_ids": ids, "stream": True}, timeout=10).text
    data = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")]
    [output_ids] = _only_request(sims)["output_ids"]
    assert data[-1]["text"] == _decoded(output_ids)  # cumulative text
    assert data[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": IM_END}
    assert [i for event in data for i in event["output_ids"]] == output_ids[:-1]


def test_tokenize_and_detokenize(gateway: Gateway) -> None:
    tokenizer = qwen_tokenizer()
    answer = httpx.post(gateway.url + "/v1/tokenize", json={"model": MODEL, "prompt": "Hi 🦜"}).json()
    assert answer["tokens"] == tokenizer.encode("Hi 🦜", True) and answer["count"] == len(answer["tokens"])
    assert answer["max_model_len"] == 32768
    chat = httpx.post(gateway.url + "/v1/tokenize", json={"model": MODEL, "messages": MESSAGES}).json()
    template = tokenizer.chat_template
    assert template is not None
    assert chat["tokens"] == tokenizer.encode(template.render(MESSAGES))
    text = httpx.post(gateway.url + "/v1/detokenize", json={"model": MODEL, "tokens": chat["tokens"],
                                                            "skip_special_tokens": False}).json()["text"]
    assert text == template.render(MESSAGES)
    bad = httpx.post(gateway.url + "/v1/detokenize", json={"model": MODEL, "tokens": [10**9]})
    assert bad.status_code == 400


def test_tokenizer_registry_reports_cache_hits(gateway: Gateway, client: openai.OpenAI) -> None:
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    info = httpx.get(gateway.url + f"/v1/tokenizers/{MODEL}").json()
    assert info["cache"]["l0_enabled"] and info["cache"]["l1_enabled"]
    assert info["cache"]["l0_hits"] >= 2
    assert httpx.delete(gateway.url + f"/v1/tokenizers/{MODEL}").status_code == 409  # gRPC workers need it


def test_admin_loads_reach_grpc_workers(gateway: Gateway) -> None:
    loads = httpx.get(gateway.url + "/get_loads", timeout=10).json()
    assert loads["successful"] == 2
    assert all(row["details"]["loads"][0]["max_running_requests"] == 256 for row in loads["loads"])


def test_unhealthy_worker_is_not_registered_until_healthy(gateway: Gateway) -> None:
    sim = GrpcSim(1, "--model", "late-model")
    try:
        sim.faults(0, healthy=False)
        response = httpx.post(gateway.url + "/workers", json={"url": sim.targets[0]})
        assert response.status_code == 202
        worker_id = response.json()["worker_id"]
        time.sleep(0.6)
        job = httpx.get(gateway.url + f"/workers/{worker_id}").json()
        assert job["status"] == "pending" and "unhealthy" in job["job_status"]["message"]
        sim.faults(0, healthy=True)
        wait_until(lambda: httpx.get(gateway.url + f"/workers/{worker_id}").json().get("connection_mode") == "grpc",
                   10, message="the worker to register")
    finally:
        workers = [w for w in gateway.workers() if w["model_id"] == "late-model"]
        for worker in workers:
            httpx.delete(gateway.url + f"/workers/{worker['id']}")
        sim.stop()


@pytest.mark.parametrize(("body", "status"), [
    ({"model": MODEL, "messages": []}, 400),
    ({"model": MODEL, "messages": [{"content": "no role"}]}, 400),
    ({"model": MODEL, "messages": MESSAGES, "n": 500}, 400),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": "",
                                    "tool_calls": [{"type": "function", "function": {"name": "f",
                                                                                     "arguments": "{oops"}}]}]}, 400),
    ({"model": MODEL, "messages": MESSAGES, "tool_choice": {"type": "function", "function": {"name": "nope"}},
      "tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
    ({"model": "no-such-model", "messages": MESSAGES}, 404),
])
def test_bad_requests_get_openai_errors(gateway: Gateway, body: dict[str, Any], status: int) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["code"]


def test_endpoints_the_pipeline_does_not_serve_say_so(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/v1/rerank", json={"model": MODEL, "query": "q", "documents": ["d"]},
                          timeout=10)
    assert response.status_code == 501 and response.json()["error"]["code"] == "not_implemented"


def test_usage_reports_cached_prompt_tokens(client: openai.OpenAI) -> None:
    long_messages = [{"role": "system", "content": "Rules: " + "be precise and kind. " * 40}, MESSAGES[1]]
    cached = []
    for _ in range(3):  # two workers, round robin: some worker sees the prompt twice
        usage = client.chat.completions.create(model=MODEL, messages=long_messages, max_tokens=2).usage
        assert usage is not None
        details = usage.prompt_tokens_details
        cached.append(details.cached_tokens if details else 0)
    assert cached[0] == 0 and max(cached) >= 16  # the simulator's prefix cache works in 16-token blocks


async def test_health_check_of_a_grpc_url(sims: GrpcSim) -> None:
    import aiohttp

    from shepherd.workers.metadata import check_health

    async with aiohttp.ClientSession() as session:
        assert await check_health(session, sims.targets[0], None)
        sims.faults(0, healthy=False)
        assert not await check_health(session, sims.targets[0], None)
