"""Property tests: however the text is cut into deltas, streaming gives the one-shot result."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shepherd.parsers.reasoning import ReasoningDelta, create_reasoning_parser
from shepherd.parsers.tool import TOOL_PARSERS, collect, create_tool_parser
from shepherd.parsers.tool.json_stream import JsonStream, minify
from shepherd.testing.parser_corpus import REASONING_SAMPLES, TOOL_SAMPLES, ReasoningSample, Sample

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *cuts})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


def cuts_for(text: str) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(text)), max_size=min(len(text), 40))


def tool_result(sample: Sample, pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    parser = create_tool_parser(sample.parser, tools=sample.tools)
    assert parser is not None
    events = [event for piece in pieces for event in parser.feed(piece)] + parser.finish()
    result = collect(events)
    return result.normal_text, [(call.name, call.arguments) for call in result.calls]


@pytest.mark.parametrize("sample", TOOL_SAMPLES, ids=lambda s: s.id)
@FAST
@given(data=st.data())
def test_any_chunking_of_tool_output_streams_the_one_shot_result(sample: Sample, data: st.DataObject) -> None:
    cuts = data.draw(cuts_for(sample.text))
    assert tool_result(sample, split_at(sample.text, cuts)) == tool_result(sample, [sample.text])


@pytest.mark.parametrize("sample", [s for s in TOOL_SAMPLES if s.calls], ids=lambda s: s.id)
@FAST
@given(data=st.data())
def test_a_cut_off_output_streams_the_same_and_closes_its_arguments(sample: Sample, data: st.DataObject) -> None:
    """Generation stopped anywhere (max_tokens): still chunk-independent, and every call's arguments parse."""
    prefix = sample.text[:data.draw(st.integers(0, len(sample.text)))]
    cuts = data.draw(cuts_for(prefix))
    normal, calls = tool_result(sample, [prefix])
    assert tool_result(sample, split_at(prefix, cuts)) == (normal, calls)
    for _, arguments in calls:
        assert isinstance(orjson.loads(arguments), dict)


PLAIN = st.text(st.characters(blacklist_characters="<[{", blacklist_categories=("Cs",)), max_size=60)


@pytest.mark.parametrize("name", sorted(set(TOOL_PARSERS)))
@FAST
@given(text=PLAIN, data=st.data())
def test_text_without_markup_passes_through_unchanged(name: str, text: str, data: st.DataObject) -> None:
    parser = create_tool_parser(name)
    assert parser is not None
    pieces = split_at(text, data.draw(cuts_for(text)))
    result = collect([event for piece in pieces for event in parser.feed(piece)] + parser.finish())
    assert result.normal_text == text and result.calls == []


def reasoning_result(sample: ReasoningSample, pieces: list[str]) -> tuple[str, str]:
    parser = create_reasoning_parser(sample.parser, chat_template_kwargs=sample.kwargs)
    if parser is None:
        return "", "".join(pieces)
    events = [event for piece in pieces for event in parser.feed(piece)] + parser.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    return reasoning, "".join(e.text for e in events if not isinstance(e, ReasoningDelta))


@pytest.mark.parametrize("sample", REASONING_SAMPLES, ids=lambda s: s.id)
@FAST
@given(data=st.data())
def test_any_chunking_of_reasoning_output_streams_the_one_shot_result(sample: ReasoningSample,
                                                                       data: st.DataObject) -> None:
    text = sample.text[:data.draw(st.integers(0, len(sample.text)))] if data.draw(st.booleans()) else sample.text
    assert reasoning_result(sample, split_at(text, data.draw(cuts_for(text)))) == reasoning_result(sample, [text])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(value=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=5), indent=st.sampled_from([None, 1, 4]),
       ascii_only=st.booleans(), data=st.data())
def test_json_stream_minifies_any_object_in_any_chunking(value: dict[str, Any], indent: int | None, ascii_only: bool,
                                                         data: st.DataObject) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    whole = minify(text)
    assert json.loads(whole) == value and "\n" not in whole
    stream = JsonStream()
    out, pos, buffer = [], 0, ""
    for piece in split_at(text, data.draw(cuts_for(text))):
        buffer += piece
        pos, chunk = stream.read(buffer, pos, False)
        out.append(chunk)
    pos, chunk = stream.read(buffer, pos, True)
    assert "".join(out) + chunk + stream.close() == whole and stream.done


@FAST
@given(value=st.dictionaries(st.text(max_size=6), JSON_VALUES, min_size=1, max_size=5), data=st.data())
def test_json_stream_closes_every_prefix_into_valid_json(value: dict[str, Any], data: st.DataObject) -> None:
    text = json.dumps(value, indent=data.draw(st.sampled_from([None, 2])))
    prefix = text[:data.draw(st.integers(1, len(text)))]
    assert isinstance(json.loads(minify(prefix)), dict)


THINKING_TOOL_OUTPUT = (
    "<think>\nThe user wants Paris weather. I should emit <tool_call> with get_weather.\n</think>\n\n"
    'Checking now.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def chained(pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    """The gRPC chat path's order: reasoning first; its content events feed the tool parser."""
    reasoning_parser = create_reasoning_parser("qwen3")
    tool_parser = create_tool_parser("qwen", tools=TOOL_SAMPLES[0].tools)
    assert reasoning_parser is not None and tool_parser is not None
    reasoning, tool_events = [], []
    for piece in [*pieces, None]:
        events = reasoning_parser.feed(piece) if piece is not None else reasoning_parser.finish()
        for event in events:
            if isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            else:
                tool_events.extend(tool_parser.feed(event.text))
    result = collect(tool_events + tool_parser.finish())
    return "".join(reasoning), result.normal_text, [(c.name, c.arguments) for c in result.calls]


@FAST
@given(data=st.data())
def test_reasoning_then_tool_calls_in_any_chunking(data: st.DataObject) -> None:
    cuts = data.draw(cuts_for(THINKING_TOOL_OUTPUT))
    expected = ("The user wants Paris weather. I should emit <tool_call> with get_weather.", "Checking now.",
                [("get_weather", '{"city":"Paris"}')])
    assert chained(split_at(THINKING_TOOL_OUTPUT, cuts)) == expected
