"""The official SDKs work through the gateway exactly as against one engine."""

from __future__ import annotations

import base64

import anthropic
import httpx
import openai
import pytest

from shepherd.testing import Gateway, Sim

MODEL = "mock-model"


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion(client: openai.OpenAI, sims: Sim) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                          max_tokens=5)
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "length"
    assert len(reply.choices[0].message.content.split()) == 5
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens == 2


def test_chat_completion_is_deterministic(client: openai.OpenAI) -> None:
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "same question"}], max_tokens=8)
    first = client.chat.completions.create(**ask).choices[0].message.content
    second = client.chat.completions.create(**ask).choices[0].message.content  # other worker (round robin)
    assert first == second


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream please"}],
                                            max_tokens=6, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_multi_choice(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 9


def test_completions_plain_and_streaming(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert reply.object == "text_completion" and len(reply.choices[0].text.split()) == 4
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True) if c.choices)
    assert streamed == reply.choices[0].text


def test_models_is_the_union_of_workers(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "sglang"


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    reply = client.embeddings.create(model=MODEL, input=["alpha", "beta"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 64
    raw = client.embeddings.create(model=MODEL, input="alpha", encoding_format="float")
    assert raw.data[0].embedding == pytest.approx(reply.data[0].embedding, rel=1e-6)
    b64 = client.embeddings.with_raw_response.create(model=MODEL, input="alpha", encoding_format="base64")
    assert isinstance(b64.http_response.json()["data"][0]["embedding"], str)
    assert base64.b64decode(b64.http_response.json()["data"][0]["embedding"])


def test_responses_api(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="Write a haiku", max_output_tokens=5)
    assert reply.output_text and len(reply.output_text.split()) == 5
    events = [e.type for e in client.responses.create(model=MODEL, input="Write a haiku", max_output_tokens=3,
                                                      stream=True)]
    assert events[0] == "response.created" and events.count("response.output_text.delta") == 3


def test_anthropic_messages(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    message = client.messages.create(model=MODEL, max_tokens=4, system="Be brief",
                                     messages=[{"role": "user", "content": "Hello"}])
    assert message.stop_reason == "max_tokens" and len(message.content[0].text.split()) == 4
    with client.messages.stream(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert len(text.split()) == 4 and final.usage.output_tokens == 4


def test_generate_rerank_classify(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        generated = http.post("/generate", json={"text": "the quick fox", "sampling_params": {"max_new_tokens": 3}})
        assert generated.status_code == 200
        assert generated.json()["meta_info"]["completion_tokens"] == 3
        batch = http.post("/generate", json={"text": ["a b", "c d"], "max_new_tokens": 2})
        assert [len(item["text"].split()) for item in batch.json()] == [2, 2]
        rerank = http.post("/v1/rerank", json={"model": MODEL, "query": "red fox",
                                               "documents": ["a red fox", "blue sky"]})
        assert rerank.status_code == 200 and rerank.json()[0]["document"] == "a red fox"
        assert http.post("/rerank", json={"query": "q", "documents": ["d"]}).status_code == 200
        classify = http.post("/v1/classify", json={"model": MODEL, "input": ["good", "bad"]})
        assert classify.status_code == 200 and len(classify.json()["data"]) == 2


def test_generate_streaming_is_cumulative(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http, http.stream(
        "POST", "/generate", json={"text": "count", "max_new_tokens": 3, "stream": True}
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 4  # three cumulative chunks, then [DONE]
