"""Sampling parameters: read and validated from OpenAI, completions and SGLang `/generate` bodies.

The result, `Sampling`, is engine-neutral; `request_builder` turns it into SGLang or vLLM protos.
`None` means "the request did not say", so the worker's own defaults (or the engines' semantic
defaults, which are not proto3's zeros) can fill in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from shepherd.errors import GatewayError

MAX_N = 128
MAX_TOP_LOGPROBS = 20


@dataclass(slots=True)
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    engine_stop_token_ids: list[int] = field(default_factory=list)  # stop_token_ids plus one-token stop strings
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    ignore_eos: bool = False
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    constraint: tuple[str, str] | None = None  # (json_schema | regex | ebnf | structural_tag | json_object, value)
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    stream_usage: bool = False  # stream_options.include_usage: a final chunk with usage
    require_reasoning: bool = False


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request_error", message, param=param)


def number(body: Mapping[str, Any], key: str, low: float | None = None, high: float | None = None) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"'{key}' must be a number", key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise invalid(f"'{key}' must be between {low} and {high}, got {value}", key)
    return float(value)


def integer(body: Mapping[str, Any], key: str, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{key}' must be an integer", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise invalid(f"'{key}' must be {bounds}, got {value}", key)
    return value


def flag(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"'{key}' must be true or false", key)
    return value


def stop_strings(value: Any, key: str = "stop") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise invalid(f"'{key}' must be a string or a list of strings", key)


def token_ids(value: Any, key: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return list(value)
    raise invalid(f"'{key}' must be a list of non-negative token ids", key)


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("'logit_bias' must be an object of token id to bias", "logit_bias")
    bias: dict[int, float] = {}
    for key, amount in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise invalid(f"'logit_bias' key {key!r} is not a token id", "logit_bias") from None
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not -100 <= amount <= 100:
            raise invalid("'logit_bias' values must be numbers between -100 and 100", "logit_bias")
        bias[token] = float(amount)
    return bias


def _schema_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    raise invalid(f"'{key}' must be a JSON schema (object or string)", key)


def constraints(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """At most one structured-output constraint from response_format, regex, ebnf, json_schema, structural_tag."""
    found: list[tuple[str, str]] = []
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
            raise invalid("'response_format' must be an object with a 'type'", "response_format")
        kind = response_format["type"]
        if kind == "json_object":
            found.append(("json_object", '{"type":"object"}'))
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema", spec.get("schema_")) if isinstance(spec, dict) else None
            if schema is None:
                raise invalid("'response_format.json_schema.schema' is required", "response_format")
            found.append(("json_schema", _schema_text(schema, "response_format")))
        elif kind == "structural_tag":
            found.append(("structural_tag", orjson.dumps(response_format).decode()))
        elif kind != "text":
            raise invalid(f"unknown response_format type {kind!r}", "response_format")
    for key, kind in (("regex", "regex"), ("ebnf", "ebnf"), ("json_schema", "json_schema"),
                      ("structural_tag", "structural_tag")):
        value = body.get(key)
        if value is None:
            continue
        found.append((kind, value if isinstance(value, str) and kind in ("regex", "ebnf")
                      else _schema_text(value, key)))
    if len(found) > 1:
        raise invalid("Multiple constraints: give only one of response_format, regex, ebnf, json_schema, "
                      "structural_tag")
    return found[0] if found else None


def _common(source: Mapping[str, Any], sampling: Sampling) -> None:
    sampling.temperature = number(source, "temperature", 0.0, 2.0)
    sampling.top_p = number(source, "top_p", 0.0, 1.0)
    sampling.top_k = integer(source, "top_k", -1)
    sampling.min_p = number(source, "min_p", 0.0, 1.0)
    sampling.frequency_penalty = number(source, "frequency_penalty", -2.0, 2.0) or 0.0
    sampling.presence_penalty = number(source, "presence_penalty", -2.0, 2.0) or 0.0
    sampling.repetition_penalty = number(source, "repetition_penalty", 0.0, 2.0)
    sampling.stop = stop_strings(source.get("stop"))
    sampling.stop_token_ids = token_ids(source.get("stop_token_ids"), "stop_token_ids")
    sampling.ignore_eos = flag(source, "ignore_eos", False)
    sampling.no_stop_trim = flag(source, "no_stop_trim", False)
    sampling.skip_special_tokens = flag(source, "skip_special_tokens", True)
    sampling.spaces_between_special_tokens = flag(source, "spaces_between_special_tokens", True)
    sampling.n = integer(source, "n", 1, MAX_N) or 1
    sampling.seed = integer(source, "seed")
    sampling.logit_bias = _logit_bias(source.get("logit_bias"))


def _stream_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid("'stream_options' must be an object", "stream_options")
    return flag(options, "include_usage", False)


def _max_tokens(body: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = integer(body, key, 0)
        if value is not None:
            return value
    return None


def chat_sampling(body: Mapping[str, Any]) -> Sampling:
    sampling = Sampling()
    _common(body, sampling)
    sampling.max_new_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens")
    sampling.min_new_tokens = integer(body, "min_tokens", 0) or 0
    sampling.logprobs = flag(body, "logprobs", False)
    top = integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top and not sampling.logprobs:
        raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    sampling.top_logprobs = top or 0
    sampling.stream = flag(body, "stream", False)
    sampling.stream_usage = _stream_usage(body)
    sampling.constraint = constraints(body)
    return sampling


def completion_sampling(body: Mapping[str, Any]) -> Sampling:
    sampling = Sampling()
    _common(body, sampling)
    sampling.max_new_tokens = _max_tokens(body, "max_tokens")
    if sampling.max_new_tokens is None:
        sampling.max_new_tokens = 16  # the completions API's documented default
    sampling.min_new_tokens = integer(body, "min_tokens", 0) or 0
    logprobs = integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    sampling.logprobs = logprobs is not None
    sampling.top_logprobs = logprobs or 0
    sampling.stream = flag(body, "stream", False)
    sampling.stream_usage = _stream_usage(body)
    sampling.constraint = constraints(body)
    return sampling


def generate_sampling(body: Mapping[str, Any]) -> Sampling:
    """SGLang's native body: knobs live in `sampling_params`, logprob options at the top level."""
    params = body.get("sampling_params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid("'sampling_params' must be an object", "sampling_params")
    sampling = Sampling()
    _common(params, sampling)
    sampling.max_new_tokens = _max_tokens(params, "max_new_tokens")
    sampling.min_new_tokens = integer(params, "min_new_tokens", 0) or 0
    sampling.constraint = constraints(params)
    sampling.logprobs = flag(body, "return_logprob", False)
    sampling.top_logprobs = integer(body, "top_logprobs_num", 0, MAX_TOP_LOGPROBS) or 0
    sampling.stream = flag(body, "stream", False)
    sampling.require_reasoning = flag(body, "require_reasoning", False)
    return sampling
