"""--model-alias with a vendor-named alias: the served model takes that vendor's parsers under both names."""

from __future__ import annotations

from shepherd.parsers.profiles import ParserProfiles
from shepherd.routers.grpc.output import ChatOutputContext
from shepherd.routers.grpc.parsed_output import ParsedOutput, ParserOutputFactory
from shepherd.testing.parser_corpus import TOOL_SAMPLES, WEATHER

KIMI = next(s for s in TOOL_SAMPLES if s.id == "kimi-k2")


def test_a_vendor_named_alias_names_the_served_models_parsers() -> None:
    profiles = ParserProfiles([("kimi-k2-instruct", "my-local-model"), ("house", "my-local-model"),
                               ("minimax-m2", "other-model")])
    for name in ("my-local-model", "kimi-k2-instruct", "house"):  # the served name, the vendor alias, another alias
        assert profiles.detection_name(name) == "kimi-k2-instruct"
    assert profiles.detection_name("other-model") == "minimax-m2"
    assert profiles.detection_name("unrelated") == "unrelated" and profiles.detection_name(None) is None


def test_what_an_alias_does_not_carry() -> None:
    profiles = ParserProfiles([
        ("kimi-k2", "Qwen/Qwen3-8B"),  # the served model's own name names a vendor: it keeps its own
        ("gpt-4o", "local-model"),  # OpenAI naming is for OpenAI clients, not a contract
        ("moonshotai/Kimi-K2", "twice"), ("glm-4.5", "twice"),  # the first vendor alias wins
    ])
    assert profiles.detection_name("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert profiles.detection_name("local-model") == "local-model"
    assert profiles.detection_name("twice") == "moonshotai/Kimi-K2"


def _context(model: str, tools: list) -> ChatOutputContext:
    return ChatOutputContext(model=model, tools=tools, tool_choice=None, thinking=False, traits=None, body={})


def test_the_grpc_output_parses_the_served_model_as_its_alias_vendor() -> None:
    factory = ParserOutputFactory(None, None, ParserProfiles([("kimi-k2", "my-local-model")]))
    context = _context("my-local-model", [WEATHER])  # the router has already resolved the alias
    assert factory.needs_special_tokens(context)
    delta = factory(context).complete(KIMI.text)
    assert delta.content == KIMI.normal
    assert [(c["id"], c["function"]["name"]) for c in delta.tool_calls] == [
        ("functions.get_weather:0", "get_weather"), ("functions.get_weather:1", "get_weather")]  # Kimi's own ids
    # Without the alias the same served model has no parser: the markup would stay in the content.
    plain = ParserOutputFactory(None, None)
    assert not plain.needs_special_tokens(context) and not isinstance(plain(context), ParsedOutput)


def test_an_explicit_parser_still_wins() -> None:
    factory = ParserOutputFactory("qwen", None, ParserProfiles([("kimi-k2", "my-local-model")]))
    delta = factory(_context("my-local-model", [WEATHER])).complete(KIMI.text)
    assert not delta.tool_calls and "functions.get_weather" in delta.content  # Qwen's parser reads no Kimi markup
