"""tool_choice: the constraint sent to the engine, the parser that reads the constrained output, validation."""

from __future__ import annotations

import orjson
import pytest

from shepherd.parsers.tool import (
    ToolCall,
    ToolChoiceError,
    collect,
    create_tool_parser,
    tool_choice_constraint,
    validate_calls,
)
from shepherd.testing.parser_corpus import SEARCH, TIME, WEATHER

TOOLS = [WEATHER, TIME]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_auto_and_none_constrain_nothing() -> None:
    assert tool_choice_constraint(TOOLS, "auto") is None
    assert tool_choice_constraint(TOOLS, None) is None
    assert tool_choice_constraint(TOOLS, "none") is None


def test_required_is_an_array_of_declared_calls() -> None:
    kind, schema = tool_choice_constraint(TOOLS, "required")  # type: ignore[misc]
    assert kind == "json_schema" and schema["type"] == "array" and schema["minItems"] == 1
    options = schema["items"]["anyOf"]
    assert [o["properties"]["name"]["enum"] for o in options] == [["get_weather"], ["get_time"]]
    assert options[0]["properties"]["parameters"] == WEATHER["function"]["parameters"]
    assert options[0]["required"] == ["name", "parameters"]


def test_a_named_function_is_constrained_to_its_arguments() -> None:
    assert tool_choice_constraint(TOOLS, NAMED) == ("json_schema", WEATHER["function"]["parameters"])


def test_allowed_tools_in_required_mode_limits_the_array() -> None:
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}
    _, schema = tool_choice_constraint(TOOLS, choice)  # type: ignore[misc]
    assert [o["properties"]["name"]["enum"] for o in schema["items"]["anyOf"]] == [["get_time"]]
    auto = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}
    assert tool_choice_constraint(TOOLS, auto) is None


def test_defs_move_to_the_root_and_conflicts_are_refused() -> None:
    def tool(name: str, address: dict) -> dict:
        return {"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "properties": {"to": {"$ref": "#/$defs/Address"}}, "$defs": {"Address": address}}}}

    _, schema = tool_choice_constraint([tool("a", {"type": "string"}), tool("b", {"type": "string"})],
                                       "required")  # type: ignore[misc]
    assert schema["$defs"] == {"Address": {"type": "string"}}
    assert "$defs" not in schema["items"]["anyOf"][0]["properties"]["parameters"]
    with pytest.raises(ToolChoiceError, match="Address"):
        tool_choice_constraint([tool("a", {"type": "string"}), tool("b", {"type": "object"})], "required")


@pytest.mark.parametrize("tools, choice", [
    (TOOLS, {"type": "function", "function": {"name": "missing"}}),
    ([], "required"),
    (TOOLS, {"type": "function"}),
    (TOOLS, "sometimes"),
])
def test_unsatisfiable_choices_are_client_errors(tools: list, choice: object) -> None:
    with pytest.raises(ToolChoiceError):
        tool_choice_constraint(tools, choice)


def test_the_parser_for_a_named_function_streams_the_whole_output_as_its_arguments() -> None:
    parser = create_tool_parser("qwen", tools=TOOLS, tool_choice=NAMED)
    assert parser is not None
    events = parser.feed(' {"city": "Ro') + parser.feed('me", "days": 3') + parser.finish()
    result = collect(events)
    assert [(c.name, orjson.loads(c.arguments)) for c in result.calls] == [("get_weather", {"city": "Rome", "days": 3})]


def test_the_parser_for_required_reads_the_constrained_array() -> None:
    parser = create_tool_parser("mistral", tools=TOOLS, tool_choice="required")
    assert parser is not None
    result = parser.parse('[{"name": "get_time", "parameters": {"timezone": "UTC"}}]')
    assert [(c.name, c.arguments) for c in result.calls] == [("get_time", '{"timezone":"UTC"}')]


def call(name: str, arguments: str) -> ToolCall:
    return ToolCall(0, "call_x", name, arguments)


def test_validation_reports_what_was_not_honoured() -> None:
    assert validate_calls([call("get_weather", '{"city": "Rome"}')], TOOLS, "required") == []
    assert validate_calls([], TOOLS, "required") == [
        "tool_choice 'required' requires a tool call, and the model made none"]
    assert validate_calls([call("get_time", "{}")], TOOLS, NAMED) == [
        "call 0 (get_time): tool_choice allows only get_weather"]
    problems = validate_calls([call("get_weather", '{"unit": "kelvin", "days": "3"}'), call("nope", "[1")], TOOLS)
    assert problems == [
        "call 0 (get_weather): arguments is missing 'city'",
        "call 0 (get_weather): arguments.unit should be one of ['celsius', 'fahrenheit']",
        "call 0 (get_weather): arguments.days should be integer",
        "call 0 (nope): no such function among the request's tools",
        "call 0 (nope): arguments are not valid JSON",
    ]
    nested = [call("search", '{"sites": ["a", 2], "filters": {}}')]
    assert validate_calls(nested, [SEARCH]) == ["call 0 (search): arguments.sites[1] should be string"]
