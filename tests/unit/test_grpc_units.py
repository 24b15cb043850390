"""Pieces of the gRPC pipeline that need no processes: validation, tool constraints, bundles, labels."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import grpc
import pytest
from smg_grpc_proto import sglang_scheduler_pb2 as pb

from shepherd.errors import GatewayError
from shepherd.parsers.tool import ToolChoiceError, tool_choice_constraint
from shepherd.policies.base import RoutingRequest
from shepherd.routers.common.retry import RetryableFailure
from shepherd.routers.grpc.driver import collect
from shepherd.routers.grpc.params import chat_sampling, constraints, generate_sampling
from shepherd.tokenizer import bundle
from shepherd.tokenizer.files import TokenizerLoadError
from shepherd.workers.grpc_client import grpc_target
from shepherd.workers.grpc_probe import parse_sampling_defaults
from tests.qwen import qwen_dir


@pytest.mark.parametrize("body", [
    {"temperature": 3}, {"top_p": -0.1}, {"n": 0}, {"max_tokens": -1}, {"stop": 5}, {"logprobs": "yes"},
    {"top_logprobs": 2}, {"logit_bias": {"x": 1}}, {"stream_options": 1}, {"response_format": {"type": "xml"}},
])
def test_bad_sampling_values_are_400(body: dict[str, object]) -> None:
    with pytest.raises(GatewayError) as caught:
        chat_sampling(body)
    assert caught.value.status == 400


def test_sampling_reads_what_was_given_and_leaves_the_rest_unset() -> None:
    sampling = chat_sampling({"temperature": 0.5, "max_completion_tokens": 7, "max_tokens": 99, "stop": "x",
                              "logprobs": True, "top_logprobs": 3, "stream": True,
                              "stream_options": {"include_usage": True}})
    assert (sampling.temperature, sampling.max_new_tokens, sampling.stop) == (0.5, 7, ["x"])
    assert sampling.top_p is None and sampling.top_k is None  # filled from the model's defaults later
    assert sampling.logprobs and sampling.top_logprobs == 3 and sampling.stream_usage
    native = generate_sampling({"sampling_params": {"max_new_tokens": 3, "regex": "a+"}, "return_logprob": True})
    assert native.max_new_tokens == 3 and native.constraint == ("regex", "a+") and native.logprobs


def test_only_one_constraint() -> None:
    assert constraints({"response_format": {"type": "json_object"}}) == ("json_object", '{"type":"object"}')
    with pytest.raises(GatewayError, match="Multiple constraints"):
        constraints({"regex": "a", "ebnf": "root ::= 'a'"})


def test_required_tool_choice_builds_an_array_schema_with_merged_defs() -> None:
    tools = [{"type": "function", "function": {"name": n, "parameters": {
        "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": {"type": "string"}}}}}
             for n in ("a", "b")]
    kind, schema = tool_choice_constraint(tools, "required") or ("", {})
    assert kind == "json_schema" and schema["minItems"] == 1 and schema["$defs"] == {"P": {"type": "string"}}
    assert [v["properties"]["name"]["enum"] for v in schema["items"]["anyOf"]] == [["a"], ["b"]]
    tools[1]["function"]["parameters"]["$defs"] = {"P": {"type": "integer"}}  # type: ignore[index]
    with pytest.raises(ToolChoiceError):
        tool_choice_constraint(tools, "required")
    assert tool_choice_constraint(tools, "auto") is None


def test_bundle_round_trip_and_unsafe_entries(tmp_path: Path) -> None:
    data = bundle.pack(qwen_dir())
    pieces = list(bundle.chunks(data))
    assert all(len(piece) <= bundle.CHUNK_SIZE for piece, _ in pieces)
    assert [digest for _, digest in pieces[:-1]] == [""] * (len(pieces) - 1) and pieces[-1][1]
    joined = b"".join(piece for piece, _ in pieces)
    bundle.verify(joined, pieces[-1][1])
    bundle.unpack(joined, str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    with pytest.raises(TokenizerLoadError, match="corrupt"):
        bundle.verify(joined + b"x", pieces[-1][1])
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.txt", "x")
    with pytest.raises(TokenizerLoadError, match="unexpected entry"):
        bundle.unpack(evil.getvalue(), str(tmp_path))


def test_small_helpers() -> None:
    assert grpc_target("grpc://10.0.0.1:30001") == "10.0.0.1:30001"
    with pytest.raises(ValueError):
        grpc_target("grpc://")
    assert parse_sampling_defaults('{"temperature": 0.6, "top_k": 20, "stop": ["x"], "top_p": true}') == {
        "temperature": 0.6, "top_k": 20}
    assert parse_sampling_defaults("not json") == {}
    routing = RoutingRequest("/v1/chat/completions", {"messages": []}, {}, text="<|im_start|>user", tokens=[1, 2])
    assert routing.text == "<|im_start|>user" and routing.tokens == (1, 2)
    assert RoutingRequest("/generate", {"text": "hi"}, {}).tokens is None


def test_chat_template_override_file(tmp_path: Path) -> None:
    from shepherd.tokenizer.tokenizer import Tokenizer

    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\\n{% endfor %}")  # escaped newline
    tokenizer = Tokenizer.from_path(qwen_dir(), chat_template_path=str(template))
    assert tokenizer.chat_template is not None
    assert tokenizer.chat_template.render([{"role": "user", "content": "hi"}]) == "[user] hi\n"
    with pytest.raises(TokenizerLoadError):
        Tokenizer.from_path(str(tmp_path / "missing"))


@pytest.mark.parametrize(("url", "valid"), [("grpc://10.0.0.1:30001", True), ("grpc://engine:1", True),
                                            ("grpc://engine", False), ("grpc://:1", False),
                                            ("grpc://a/b:1", False)])
def test_grpc_worker_urls_are_validated(url: str, valid: bool) -> None:
    from shepherd.config import ConfigError, GatewayConfig
    from shepherd.workers.spec import SpecError, WorkerSpec

    if valid:
        GatewayConfig(worker_urls=(url,)).validate()
        assert WorkerSpec.from_json({"url": url, "runtime_type": "vllm"}).runtime_type == "vllm"
        return
    with pytest.raises(ConfigError):
        GatewayConfig(worker_urls=(url,)).validate()
    with pytest.raises(SpecError):
        WorkerSpec.from_json({"url": url})


class _BreakingEngine:
    """An EngineCall whose stream breaks after the first message, as far as `collect` can tell."""

    def __init__(self, final: bool) -> None:
        self.final = final
        self.worker = type("W", (), {"url": "grpc://w"})()
        self.broken = False

    async def read(self) -> None:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   details="connection reset")

    def broke_off(self) -> None:
        self.broken = True


@pytest.mark.parametrize("final", [False, True])
async def test_a_whole_answer_broken_off_after_its_first_message_is_retried_unless_final(final: bool) -> None:
    # n=2 without streaming: one Complete arrived, then the stream broke. Nothing reached the client,
    # so (as for an HTTP body that breaks off) another worker answers where attempts remain.
    first = pb.GenerateResponse(request_id="r", complete=pb.GenerateComplete(index=0))
    engine = _BreakingEngine(final)
    with pytest.raises((RetryableFailure, GatewayError)) as caught:
        await collect(engine, first, 2)  # type: ignore[arg-type]
    assert engine.broken  # charged to the worker
    assert isinstance(caught.value, GatewayError if final else RetryableFailure)
    error = caught.value if final else caught.value.error  # type: ignore[union-attr]
    assert error.status == 503 and "mid-answer" in error.message
