"""Edge cases of each tool-call family, as a client of the streaming API sees them."""

from __future__ import annotations

import orjson
import pytest

from shepherd.parsers.tool import (
    ContentDelta,
    ToolCallArgs,
    ToolCallStart,
    ToolEvent,
    UnknownParserError,
    collect,
    create_tool_parser,
    detect_tool_parser,
)
from shepherd.parsers.tool.base import ToolParser
from shepherd.testing.parser_corpus import TOOLS, WEATHER


def parser_for(name: str, tools: object = TOOLS) -> ToolParser:
    parser = create_tool_parser(name, tools=tools)  # type: ignore[arg-type]
    assert parser is not None
    return parser


def run(name: str, *pieces: str, tools: object = TOOLS) -> list[ToolEvent]:
    parser = parser_for(name, tools)
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events + parser.finish()


def calls(events: list[ToolEvent]) -> list[tuple[str, object]]:
    return [(call.name, orjson.loads(call.arguments)) for call in collect(events).calls]


def text(events: list[ToolEvent]) -> str:
    return collect(events).normal_text


# -- behaviour every family shares ------------------------------------------------------------------

def test_a_marker_split_across_deltas_is_held_back_not_shown() -> None:
    parser = parser_for("qwen")
    assert parser.feed("Sure. <tool_") == [ContentDelta("Sure.")]
    started = parser.feed('call>\n{"name": "get_time", ')
    assert [(type(e), getattr(e, "name", None)) for e in started] == [(ToolCallStart, "get_time")]
    rest = parser.feed('"arguments": {}}\n</tool_call>') + parser.finish()
    assert [(type(e), getattr(e, "fragment", None)) for e in rest] == [(ToolCallArgs, "{}")]


def test_the_name_comes_first_then_argument_fragments() -> None:
    parser = parser_for("qwen")
    first = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert isinstance(first[0], ToolCallStart) and first[0].name == "get_weather" and first[0].index == 0
    assert first[0].id.startswith("call_") and len(first[0].id) == 29
    assert [e.fragment for e in first[1:] if isinstance(e, ToolCallArgs)] == ['{"city":"Pa']
    rest = parser.feed('ris"}}\n</tool_call>') + parser.finish()
    assert [e.fragment for e in rest if isinstance(e, ToolCallArgs)] == ['ris"}']


def test_several_calls_in_one_delta_stay_apart() -> None:
    events = run("qwen", '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "UTC"}}\n</tool_call>\n'
                         '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "CET"}}\n</tool_call>')
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.index for s in starts] == [0, 1] and starts[0].id != starts[1].id
    by_index: dict[int, str] = {0: "", 1: ""}
    for event in events:
        if isinstance(event, ToolCallArgs):
            by_index[event.index] += event.fragment
    assert by_index == {0: '{"timezone":"UTC"}', 1: '{"timezone":"CET"}'}


def test_an_unfinished_call_is_flushed_with_valid_json_at_the_end() -> None:
    events = run("qwen", '<tool_call>\n{"name": "search", "arguments": {"query": "rust \\u00', 'e9", "sites": ["a", ')
    assert calls(events) == [("search", {"query": "rust é", "sites": ["a"]})]


def test_a_call_cut_off_before_its_name_is_complete_stays_text() -> None:
    events = run("qwen", 'Answer: <tool_call>\n{"name": "get_wea')
    assert calls(events) == [] and text(events) == 'Answer: <tool_call>\n{"name": "get_wea'


def test_an_undeclared_function_is_returned_as_content() -> None:
    raw = '<tool_call>\n{"name": "delete_everything", "arguments": {"confirm": true}}\n</tool_call>'
    events = run("qwen", "Before. ", raw, " After.")
    assert calls(events) == [] and text(events) == "Before. " + raw + " After."
    # Without declared tools the parser cannot tell, so the call is kept.
    assert calls(run("qwen", raw, tools=None)) == [("delete_everything", {"confirm": True})]


def test_a_parser_is_single_use() -> None:
    parser = parser_for("qwen")
    parser.feed("Hi")
    with pytest.raises(RuntimeError):
        parser.parse("x")
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


# -- JSON call objects --------------------------------------------------------------------------

def test_arguments_before_the_name_are_held_until_the_name() -> None:
    events = run("json", '{"arguments": {"city": "Oslo"}, "name": "get_weather"}')
    assert isinstance(events[0], ToolCallStart) and calls(events) == [("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("arguments, expected", [
    ('"{\\"city\\": \\"Oslo\\"}"', {"city": "Oslo"}),  # a JSON string holding the object
    ("null", {}),
    (None, {}),  # no arguments key at all
])
def test_argument_shapes(arguments: str | None, expected: dict[str, str]) -> None:
    body = '{"name": "get_weather"' + (f', "arguments": {arguments}' if arguments else "") + "}"
    assert calls(run("json", body)) == [("get_weather", expected)]


def test_sloppy_json_strings_still_give_valid_arguments() -> None:
    """Raw control characters and lone backslashes, as models write them in paths and code."""
    events = run("qwen", '<tool_call>\n{"name": "search", "arguments": {"query": "a\tb\nc"}}\n</tool_call>')
    assert calls(events) == [("search", {"query": "a\tb\nc"})]
    events = run("qwen", '<tool_call>\n{"name": "ls", "arguments": {"dirPath": "C:\\Users\\me \\u00e9"}}')
    assert calls(events) == [("ls", {"dirPath": "C:\\Users\\me é"})]


def test_llama_keeps_leading_whitespace_of_a_plain_answer_and_braces_in_text() -> None:
    assert text(run("llama", "  Sure", " {x} ok")) == "  Sure {x} ok"
    assert text(run("llama", " ; not a separator")) == " ; not a separator"
    builtin = "<|python_tag|>brave_search.call(query='x')"  # a built-in tool call, not JSON: left as text
    assert text(run("llama", builtin)) == builtin


def test_mistral_accepts_a_declared_call_and_returns_an_undeclared_one_as_text() -> None:
    events = run("mistral", '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}, {"name": "rm", "arguments": {}}]')
    assert calls(events) == [("get_time", {})] and text(events) == '{"name": "rm", "arguments": {}}'


# -- marker families with JSON arguments -----------------------------------------------------------

def test_broken_json_never_reads_past_the_call_end_marker() -> None:
    events = run("deepseek31", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Par'
                               "<｜tool▁call▁end｜><｜tool▁calls▁end｜>Done.")
    assert calls(events) == [("get_weather", {"city": "Par"})] and text(events) == "Done."


def test_deepseek_v3_requires_the_function_type() -> None:
    raw = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>retrieval<｜tool▁sep｜>get_weather\n```json\n{}\n```"
           "<｜tool▁call▁end｜>")
    events = run("deepseek", raw)
    # Not a function call: its text stays (the block and end markers, being markup, do not).
    assert calls(events) == []
    assert text(events) == "<｜tool▁call▁begin｜>retrieval<｜tool▁sep｜>get_weather\n```json\n{}\n```"


def test_kimi_keeps_the_models_ids_and_reads_the_misspelled_section() -> None:
    events = run("kimik2", "<|tool_call_section_begin|><|tool_call_begin|>functions.get_time:3"
                           '<|tool_call_argument_begin|>{"timezone": "UTC"}<|tool_call_end|><|tool_call_section_end|>')
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.id, s.name) for s in starts] == [("functions.get_time:3", "get_time")] and text(events) == ""


# -- pythonic -----------------------------------------------------------------------------------------

def test_pythonic_positional_arguments_are_not_a_call() -> None:
    events = run("pythonic", "[get_weather('Paris')]")
    assert calls(events) == [] and text(events) == "[get_weather('Paris')]"


def test_pythonic_call_cut_off_is_closed_and_kept() -> None:
    assert calls(run("pythonic", '[get_weather(city="Par')) == [("get_weather", {"city": "Par"})]


def test_pythonic_sends_each_call_whole_as_soon_as_it_closes() -> None:
    parser = parser_for("pythonic")
    first = parser.feed('[get_time(timezone="a)b"), get_ti')
    assert [type(e) for e in first] == [ToolCallStart, ToolCallArgs]
    assert isinstance(first[1], ToolCallArgs) and first[1].fragment == '{"timezone":"a)b"}'


# -- XML families ------------------------------------------------------------------------------------

def test_qwen_coder_streams_string_values_and_types_the_rest() -> None:
    parser = parser_for("qwen_coder")
    events = parser.feed("<tool_call>\n<function=write_file>\n<parameter=content>\n<div>a < b</div>\nline")
    fragments = [e.fragment for e in events if isinstance(e, ToolCallArgs)]
    assert fragments == ["{", '"content":"', "<div>a < b</div>\\nline"]
    events += parser.feed("\n</parameter>\n</function>\n</tool_call>") + parser.finish()
    assert calls(events) == [("write_file", {"content": "<div>a < b</div>\nline"})]


def test_qwen_coder_tolerates_a_missing_parameter_close_tag() -> None:
    events = run("qwen_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n"
                               "<parameter=days>\n2\n</function>\n</tool_call>")
    assert calls(events) == [("get_weather", {"city": "Oslo", "days": 2})]


def test_glm_values_are_typed_by_the_schema() -> None:
    events = run("glm45", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>123</arg_value>\n"
                          "<arg_key>days</arg_key>\n<arg_value>7</arg_value>\n</tool_call>")
    assert calls(events) == [("get_weather", {"city": "123", "days": 7})]  # city is a string: stays "123"


def test_glm_call_without_arguments() -> None:
    assert calls(run("glm45", "<tool_call>get_time\n</tool_call>")) == [("get_time", {})]


def test_step3_without_the_function_preamble() -> None:
    events = run("step3", '<｜tool_calls_begin｜><｜tool_call_begin｜><steptml:invoke name="ls"><steptml:parameter '
                          'name="dirPath">/tmp</steptml:parameter></steptml:invoke><｜tool_call_end｜><｜tool_calls_end｜>')
    assert calls(events) == [("ls", {"dirPath": "/tmp"})]


# -- the registry ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, parser", [
    ("Qwen/Qwen2.5-7B-Instruct", "qwen"),
    ("Qwen/Qwen3-Coder-480B-A35B-Instruct", "qwen_coder"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", "pythonic"),
    ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", "mistral"),
    ("deepseek-ai/DeepSeek-V3-0324", "deepseek"),
    ("deepseek-ai/DeepSeek-V3.1-Terminus", "deepseek31"),
    ("deepseek-ai/DeepSeek-V3.2", None),
    ("moonshotai/Kimi-K2-Instruct-0905", "kimik2"),
    ("zai-org/GLM-4.6", "glm45"),
    ("stepfun-ai/step3", "step3"),
    ("gpt2", None),
])
def test_detection_from_the_model_name(model: str, parser: str | None) -> None:
    assert detect_tool_parser(model) == parser


def test_registry_names_and_errors() -> None:
    assert type(create_tool_parser("hermes")).__name__ == "HermesToolParser"
    assert create_tool_parser("passthrough", model="Qwen/Qwen3-8B") is None
    assert create_tool_parser(None, model="unknown-model") is None
    assert create_tool_parser("qwen", tools=[WEATHER], tool_choice="none") is None
    with pytest.raises(UnknownParserError):
        create_tool_parser("no_such_parser")
    with pytest.raises(ValueError, match="tools\\[0\\]"):
        create_tool_parser("qwen", tools=[{"type": "function", "function": {"name": ""}}])
