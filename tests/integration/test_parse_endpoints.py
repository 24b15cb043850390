"""/parse/function_call and /parse/reasoning through a real gateway process."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from shepherd.testing import Gateway
from shepherd.testing.parser_corpus import REASONING_SAMPLES, TOOL_SAMPLES, WEATHER, Sample


@pytest.fixture(scope="module")
def parsing_gateway() -> Iterator[Gateway]:
    """No workers needed; configured defaults for both parsers."""
    gateway = Gateway((), "--tool-call-parser", "qwen", "--reasoning-parser", "deepseek_r1")
    yield gateway
    gateway.stop()


def post(gateway: Gateway, path: str, body: object) -> httpx.Response:
    return httpx.post(gateway.url + path, content=orjson.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize("sample", [s for s in TOOL_SAMPLES if s.id in ("qwen-single", "kimi-k2", "glm45", "step3")],
                         ids=lambda s: s.id)
def test_function_call_parsing(parsing_gateway: Gateway, sample: Sample) -> None:
    response = post(parsing_gateway, "/parse/function_call",
                    {"text": sample.text, "tool_call_parser": sample.parser, "tools": sample.tools})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["normal_text"] == sample.normal
    expected = list(sample.calls)
    assert [(c["name"], orjson.loads(c["parameters"])) for c in body["calls"]] == expected
    assert [c["tool_index"] for c in body["calls"]] == list(range(len(expected)))
    openai = body["tool_calls"]
    assert [(c["type"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in openai] == [
        ("function", name, args) for name, args in expected]
    assert all(c["id"] for c in openai)


def test_the_configured_parser_applies_and_wins_over_the_model_name(parsing_gateway: Gateway) -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    by_flag = post(parsing_gateway, "/parse/function_call", {"text": text, "tools": [WEATHER]}).json()
    assert [c["name"] for c in by_flag["calls"]] == ["get_weather"] and by_flag["normal_text"] == ""
    # --tool-call-parser qwen outranks what the model name implies (llama), as in SMG.
    llama = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    body = post(parsing_gateway, "/parse/function_call", {"text": llama, "model": "meta-llama/Llama-3.1-8B"}).json()
    assert body["calls"] == [] and body["normal_text"] == llama


def test_reasoning_parsing(parsing_gateway: Gateway) -> None:
    sample = next(s for s in REASONING_SAMPLES if s.id == "qwen3-think")
    body = post(parsing_gateway, "/parse/reasoning", {"text": sample.text, "reasoning_parser": "qwen3"}).json()
    assert body == {"normal_text": sample.normal, "reasoning_text": sample.reasoning, "success": True}
    # The configured default (deepseek_r1) starts inside the block.
    body = post(parsing_gateway, "/parse/reasoning", {"text": "hmm</think>ok"}).json()
    assert (body["reasoning_text"], body["normal_text"]) == ("hmm", "ok")
    off = post(parsing_gateway, "/parse/reasoning", {"text": "<think>a</think>b", "reasoning_parser": "qwen3",
                                                     "chat_template_kwargs": {"enable_thinking": False}}).json()
    assert (off["reasoning_text"], off["normal_text"]) == ("", "<think>a</think>b")


@pytest.mark.parametrize("path, body, code, param", [
    ("/parse/function_call", {"tool_call_parser": "qwen"}, "missing_field", "text"),
    ("/parse/function_call", {"text": 5, "tool_call_parser": "qwen"}, "invalid_type", "text"),
    ("/parse/function_call", {"text": "x", "tool_call_parser": "qwen9"}, "unknown_parser", "tool_call_parser"),
    ("/parse/function_call", {"text": "x", "tools": {"name": "f"}}, "invalid_type", "tools"),
    ("/parse/function_call", {"text": "x", "tools": [{"function": {"name": 3}}]}, "invalid_tools", "tools"),
    ("/parse/reasoning", {"text": "x", "reasoning_parser": "r2"}, "unknown_parser", "reasoning_parser"),
    ("/parse/reasoning", {"text": "x", "chat_template_kwargs": []}, "invalid_type", "chat_template_kwargs"),
])
def test_bad_input_is_an_openai_style_400(parsing_gateway: Gateway, path: str, body: dict, code: str,
                                          param: str) -> None:
    response = post(parsing_gateway, path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert response.headers["x-smg-error-code"] == code


def test_without_a_configured_or_detectable_parser_the_field_is_required(gateway: Gateway) -> None:
    """The shared gateway has no parser flags: the request must name one (or a known model)."""
    response = post(gateway, "/parse/function_call", {"text": "x", "model": "mock-model"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_call_parser"
    response = post(gateway, "/parse/reasoning", {"text": "x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_parser"
    llama = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    detected = post(gateway, "/parse/function_call", {"text": llama, "model": "meta-llama/Llama-3.1-8B"}).json()
    assert [(c["name"], c["parameters"]) for c in detected["calls"]] == [("get_weather", '{"city":"Oslo"}')]
    passthrough = post(gateway, "/parse/function_call", {"text": "<tool_call>", "tool_call_parser": "passthrough"})
    assert passthrough.json() == {"normal_text": "<tool_call>", "calls": [], "tool_calls": [], "success": True}
    assert httpx.post(gateway.url + "/parse/reasoning", content=b"{oops").status_code == 400
