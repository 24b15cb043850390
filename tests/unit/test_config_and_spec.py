from __future__ import annotations

import pytest

from shepherd.assembly import checked
from shepherd.cli import _size, build_parser, config_from_args
from shepherd.config import ConfigError, GatewayConfig, RetryConfig
from shepherd.workers.spec import SpecError, WorkerSpec
from shepherd.workers.worker import WorkerType


def test_cli_flags_map_to_config() -> None:
    args = build_parser().parse_args([
        "launch", "--port", "8080", "--worker-urls", "http://a:1", "http://b:2", "--policy", "random",
        "--max-payload-size", "2M", "--request-timeout-secs", "5", "--disable-retries", "--log-json"])
    config = config_from_args(args).validate()
    assert config.port == 8080 and config.worker_urls == ("http://a:1", "http://b:2")
    assert config.policy == "random" and config.max_payload_size == 2 * 1024 * 1024
    assert config.request_timeout_secs == 5 and config.log_json
    assert config.retry.max_retries == 1 and config.retry.attempts == 1  # SMG: --disable-retries is one attempt


@pytest.mark.parametrize("changes, message", [
    ({"port": 0}, "--port"),
    ({"policy": "nope"}, "--policy"),
    ({"request_timeout_secs": 0}, "--request-timeout-secs"),
    ({"max_payload_size": 0}, "--max-payload-size"),
    ({"worker_urls": ("localhost:8000",)}, "must start with http"),
    ({"retry": RetryConfig(jitter_factor=2.0)}, "--retry-jitter-factor"),
    ({"tool_call_parser": "qwen2"}, "--tool-call-parser"),
    ({"reasoning_parser": "qwen"}, "--reasoning-parser"),
    ({"model_aliases": (("a", "a"),)}, "two different names"),
    ({"model_aliases": (("a", "m1"), ("a", "m2"))}, "--model-alias a names two models"),
    ({"model_aliases": (("a", "b"), ("b", "c"))}, "--model-alias b is both"),
])
def test_invalid_config_names_the_flag(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        checked(GatewayConfig(**changes))


def test_parser_flags_map_to_config() -> None:
    args = build_parser().parse_args(["launch", "--tool-call-parser", "qwen_coder", "--reasoning-parser", "qwen3"])
    config = config_from_args(args).validate()
    assert config.tool_call_parser == "qwen_coder" and config.reasoning_parser == "qwen3"
    assert config_from_args(build_parser().parse_args(["launch"])).tool_call_parser is None


def test_model_aliases_from_the_command_line() -> None:
    args = build_parser().parse_args(["launch", "--model-alias", "fast=big", "--model-alias", "gpt-4o = big"])
    assert config_from_args(args).validate().model_aliases == (("fast", "big"), ("gpt-4o", "big"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["launch", "--model-alias", "no-equals-sign"])


def test_sizes() -> None:
    assert _size("512M") == 512 * 1024**2 and _size("1k") == 1024 and _size("100") == 100 and _size("1GiB") == 1024**3


def test_worker_spec_parsing() -> None:
    spec = WorkerSpec.from_json({"url": "http://h:1/", "models": ["a", {"id": "b", "aliases": ["c"]}],
                                 "worker_type": "prefill", "labels": {"k": 1}, "priority": 3, "api_key": "x"})
    assert spec.url == "http://h:1" and [c["id"] for c in spec.model_cards] == ["a", "b"]
    assert spec.worker_type is WorkerType.PREFILL and spec.labels == {"k": "1"} and spec.priority == 3
    for bad in ({}, {"url": 5}, {"url": "h:1"}, {"url": "http://h", "worker_type": "x"},
                {"url": "http://h", "models": "a"}, {"url": "http://h", "priority": "high"},
                {"url": "http://h", "runtime_type": "tgi"}, {"url": "http://h", "kv_role": "both"}):
        with pytest.raises(SpecError):
            WorkerSpec.from_json(bad)
    with pytest.raises(SpecError, match="cannot be updated"):
        spec.apply_update({"url": "http://other"})
    vllm = WorkerSpec.from_json({"url": "http://h:1", "worker_type": "prefill", "kv_connector": "NixlConnector",
                                 "kv_role": "kv_both"})
    assert (vllm.kv_connector, vllm.kv_role) == ("NixlConnector", "kv_both")
